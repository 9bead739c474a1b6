"""The best checkpoint by an eval metric, and early stopping on it.

The best state is an Orbax checkpoint of its own under `workdir/best` (one kept), beside
the regular checkpoints, with its metric in `best/metric.json`, so a resumed run keeps
comparing against it. `evaluate`, `predict` and `export` use it when a run kept one.
"""

import math
from pathlib import Path

from flax_lm import json_files
from flax_lm.workdir import checkpointing
from flax_lm.errors import UserError

DIRECTORY = "best"
RECORD = "metric.json"
LOWER_IS_BETTER = ("loss", "perplexity", "mse")


class BestKeeper:
    def __init__(self, workdir: Path, metric: str, patience: int, async_writes: bool, enabled: bool):
        self.metric, self.patience, self.enabled = metric, patience, enabled
        self.workdir = Path(workdir)
        self.sign = -1.0 if metric.split("/")[-1] in LOWER_IS_BETTER else 1.0
        self.checkpointer = _checkpointer(workdir, async_writes)
        record = _record(workdir)
        self.best = record["value"] if record else None
        self.evals_without_improvement = 0

    def update(self, step: int, metrics: dict, state) -> bool:
        """Saves `state` if `metrics` beat the best so far; returns True when training should stop."""
        if self.metric not in metrics:
            raise UserError(f"train.best_metric {self.metric!r} is not an eval metric of this task; "
                            f"it has {', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        if self.best is None or (not math.isnan(value) and self.sign * (value - self.best) > 0):
            self.best, self.evals_without_improvement = value, 0
            self.checkpointer.save(step, state, {}, force=True)
            self.checkpointer.wait()  # the record below must never name a checkpoint still being written
            if self.enabled:
                json_files.write_json(self.workdir / DIRECTORY / RECORD,
                                       {"metric": self.metric, "value": value, "step": step})
            return False
        self.evals_without_improvement += 1
        return 0 < self.patience <= self.evals_without_improvement

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


def restore(workdir: Path, target):
    """The best state a run kept, restored onto `target` (abstract arrays with shardings), or None."""
    record = _record(workdir)
    if record is None:
        return None
    checkpointer = _checkpointer(workdir, async_writes=False)
    state, _ = checkpointer.restore(record["step"], target)
    checkpointer.close()
    return state


def _record(workdir: Path) -> dict | None:
    path = Path(workdir) / DIRECTORY / RECORD
    return json_files.read_json(path) if path.is_file() else None


def _checkpointer(workdir: Path, async_writes: bool) -> checkpointing.Checkpointer:
    return checkpointing.Checkpointer(Path(workdir) / DIRECTORY / "checkpoint", save_every=1, keep=1,
                                      async_writes=async_writes)
