"""Metrics reach TensorBoard and the JSONL file, without importing TensorFlow, and with train.wandb a
Weights & Biases run (offline here) too."""

import json
import os
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


TINY = ["--config", "gpt2_tiny", "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.vocab_size=300", "--config.model.max_len=16", "--config.data.max_bytes=40000",
        "--config.train.batch_size=8", "--config.train.progress_bar=false", "--config.optim.warmup_steps=1",
        "--config.sample.max_new_tokens=0", "--config.train.log_every=2", "--config.train.eval_every=2",
        "--config.train.eval_batches=1"]


def _wandb_history(path) -> list[tuple[int, dict]]:
    """(step, {metric: value}) of each history record in a run's .wandb file: wandb's Record protos in
    the LevelDB log format (32 KiB blocks of chunks with a 7-byte header: CRC, length, type), after a
    7-byte file header."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos = path.read_bytes(), 32768, 7
    assert data.startswith(b":W&B")
    records, partial = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        partial += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a whole record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(partial))
            partial = b""
    return [(r.history.step.num, {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
                                  if not (i.key or i.nested_key[0]).startswith("_")})
            for r in records if r.WhichOneof("record_type") == "history"]


def test_an_offline_wandb_run_holds_the_logged_metrics_and_resumes_as_one_run(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install flax_lm[wandb])")
    work = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config")}
    for steps in (4, 6):
        done = subprocess.run([sys.executable, "-m", "flax_lm.cli", "train", *TINY, f"--config.train.steps={steps}",
                               "--config.train.wandb=true", "--config.train.wandb_project=tests", "--workdir", str(work)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
    run_id = (work / "wandb" / "run_id").read_text().strip()
    runs = sorted((work / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2   # the resumed training logged to the same run
    logged = [entry for run in runs for entry in _wandb_history(run)]
    expected = {}
    for row in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()):
        expected.setdefault(row.pop("step"), {}).update({k: v for k, v in row.items() if k != "time"})
    merged = {}
    for step, values in logged:
        merged.setdefault(step, {}).update(values)
    assert sorted(merged) == sorted(expected) == [2, 4, 6]
    for step, values in expected.items():
        assert merged[step].keys() == values.keys() and "train/loss" in values and "eval/loss" in values
        assert merged[step] == pytest.approx(values)


def test_train_wandb_without_the_package_is_one_line(tmp_path):
    main = "import sys; sys.modules['wandb'] = None; from flax_lm.cli import main; sys.exit(main())"
    failed = subprocess.run([sys.executable, "-c", main, "train", *TINY, "--config.train.steps=2",
                             "--config.train.wandb=true", "--workdir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert "train.wandb needs the wandb package: pip install 'flax_lm[wandb]'" in failed.stderr
    assert not (tmp_path / "run").exists()
