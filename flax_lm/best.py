"""The best checkpoint by an eval metric, and early stopping on it.

The best state is an Orbax checkpoint of its own under `workdir/best` (one kept), beside
the regular checkpoints, with its metric in `best/metric.json`, so a resumed run keeps
comparing against it. `evaluate`, `predict` and `export` use it when a run kept one.
"""

import math
from pathlib import Path

from flax_lm import checkpointing
from flax_lm import workdir as workdir_lib
from flax_lm.errors import UserError

DIRECTORY = "best"
LOWER_IS_BETTER = ("loss", "perplexity", "mse")


class BestKeeper:
    def __init__(self, workdir: Path, metric: str, patience: int, async_writes: bool, enabled: bool):
        self.metric, self.patience, self.enabled = metric, patience, enabled
        self.directory = Path(workdir) / DIRECTORY
        self.sign = -1.0 if metric.split("/")[-1] in LOWER_IS_BETTER else 1.0
        self.checkpointer = checkpointing.Checkpointer(self.directory / "checkpoint", save_every=1, keep=1,
                                                       async_writes=async_writes)
        record = self.directory / "metric.json"
        self.best = workdir_lib.read_json(record)["value"] if record.is_file() else None
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
                workdir_lib.write_json(self.directory / "metric.json",
                                       {"metric": self.metric, "value": value, "step": step})
            return False
        self.evals_without_improvement += 1
        return 0 < self.patience <= self.evals_without_improvement

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


def best_step(workdir: Path) -> int | None:
    """The step of the best checkpoint a run kept, or None."""
    record = Path(workdir) / DIRECTORY / "metric.json"
    return workdir_lib.read_json(record)["step"] if record.is_file() else None


def checkpoint_directory(workdir: Path) -> Path:
    return Path(workdir) / DIRECTORY / "checkpoint"
