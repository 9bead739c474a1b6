"""Metrics to TensorBoard event files and a JSONL file in the workdir (process 0 only)."""

import itertools
import json
import os
import socket
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

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


class MetricsLog:
    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
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

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
            self.jsonl.close()
