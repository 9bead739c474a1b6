"""Metrics reach TensorBoard and the JSONL file, without importing TensorFlow."""

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

WRITE = """
import sys
from flax_lm.training.metrics_log import MetricsLog
log = MetricsLog(sys.argv[1])
log.write(1, {"loss": 2.5, "learning_rate": 1e-3})
log.write(2, {"loss": 2.25, "skipped": None})
log.write(2, {"loss": 2.0}, prefix="eval/")
log.close()
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
"""


def test_scalars_are_read_back_by_tensorboard_and_tensorflow_is_not_imported(tmp_path):
    done = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/loss", "learning_rate", "loss"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 2.25)]
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(2, 2.0)]
    assert events.Scalars("learning_rate")[0].value == pytest.approx(1e-3, rel=1e-6)  # stored as float32
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 2] and rows[1]["loss"] == 2.25 and "skipped" not in rows[1]
