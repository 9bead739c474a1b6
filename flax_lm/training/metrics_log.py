"""Metrics to TensorBoard event files and a JSONL file in the workdir (process 0 only), and, with
`train.wandb`, to a Weights & Biases run too."""

import itertools
import json
import os
import secrets
import socket
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from flax_lm.errors import UserError

_file_numbers = itertools.count()


class EventFile:
    """A TensorBoard event file of scalars, written with TensorBoard's record framing and protos.

    Not `tensorboard.summary.Writer`: where TensorFlow is installed (TFDS brings it), that imports
    all of it for its file API, 4-5 s of CPU at the start of every run."""

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard finds files by this prefix; the rest keeps concurrent writers apart
        self.path = logdir / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                              f"{os.getpid()}.{next(_file_numbers)}")
        self.records = RecordWriter(open(self.path, "wb"))
        self._write(event_pb2.Event(file_version="brain.Event:2"))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        self._write(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=values)))

    def _write(self, event: event_pb2.Event) -> None:
        event.wall_time = time.time()
        self.records.write(event.SerializeToString())

    def flush(self) -> None:
        self.records.flush()

    def close(self) -> None:
        self.records.close()


class WandbRun:
    """A Weights & Biases run in `workdir/wandb`: one per workdir, resumed with the training (its id
    is kept in `workdir/wandb/run_id`). WANDB_MODE=offline writes it there with no network, for
    `wandb sync` later."""

    ID_FILE = "run_id"

    def __init__(self, workdir: Path, project: str, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("train.wandb needs the wandb package: pip install 'flax_lm[wandb]'") from None
        where = Path(workdir) / "wandb"
        where.mkdir(parents=True, exist_ok=True)
        id_file = where / self.ID_FILE
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8) + "\n")   # W&B run ids: letters and digits
        # console="off": wandb would otherwise wrap stdout and stderr, under the progress bar
        self.run = wandb.init(project=project, name=name or Path(workdir).resolve().name, dir=str(workdir),
                              id=id_file.read_text().strip(), resume="allow", config=config,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    """`wandb`: (project, run name, config) of a W&B run to log to as well, or None."""

    def __init__(self, workdir: Path, enabled: bool = True, wandb: tuple[str, str, dict] | None = None):
        self.enabled = enabled
        self.wandb = None
        if enabled:
            self.wandb = WandbRun(workdir, *wandb) if wandb else None
            self.tensorboard = EventFile(Path(workdir) / "tensorboard")
            self.jsonl = open(Path(workdir) / "metrics.jsonl", "a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        """Records scalar `metrics` at `step`; names get `prefix` (e.g. "eval/")."""
        if not self.enabled:
            return
        named = {prefix + k: float(v) for k, v in metrics.items() if v is not None}
        self.tensorboard.add_scalars(step, named)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **named}) + "\n")
        self.jsonl.flush()
        self.tensorboard.flush()
        if self.wandb:
            self.wandb.log(step, named)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
            self.jsonl.close()
            if self.wandb:
                self.wandb.close()
