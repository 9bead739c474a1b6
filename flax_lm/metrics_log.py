"""Metrics to TensorBoard event files and a JSONL file in the workdir (process 0 only)."""

import json
import time
from pathlib import Path

from tensorboard.summary import Writer


class MetricsLog:
    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.tensorboard = Writer(str(Path(workdir) / "tensorboard"))
            self.jsonl = open(Path(workdir) / "metrics.jsonl", "a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        """Records scalar `metrics` at `step`; names get `prefix` (e.g. "eval/")."""
        if not self.enabled:
            return
        named = {prefix + k: float(v) for k, v in metrics.items() if v is not None}
        for name, value in named.items():
            self.tensorboard.add_scalar(name, value, step=step)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **named}) + "\n")
        self.jsonl.flush()
        self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
            self.jsonl.close()
