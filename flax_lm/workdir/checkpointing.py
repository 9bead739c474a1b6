"""Orbax checkpoints of the train state and the data iterator's position.

Each step directory holds two items: `state` (the TrainState pytree, saved sharded)
and `data` (JSON). Writes are asynchronous; Orbax finalises a step atomically, so a
step directory that exists was complete when written, and old steps are deleted only
after a newer one is finalised. Files can still be damaged later (a disk, a copy, a
person); `restore_newest_readable` then falls back to the previous step.
"""

import contextlib
import dataclasses
import errno
import functools
import logging
import re
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flax_lm.errors import UserError

UNREADABLE = "unreadable_checkpoints"  # beside the checkpoints directory; damaged steps are moved here
# TrainState fields that checkpoints written before them lack, with the value they had then.
ADDED_FIELDS = {"skipped_steps": 0}


class Checkpointer:
    def __init__(self, directory: Path, *, save_every: int, keep: int, async_writes: bool):
        self.directory = Path(directory).absolute()
        _save_whole_arrays_within_one_process()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_decision_policy=_save_policy(save_every),
                enable_async_checkpointing=async_writes),
            item_names=("state", "data"),
        )

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving `step` if it is due (or `force`); returns whether it did. A save that
        ran out of disk space (this one, or the previous asynchronous one) is a UserError."""
        with self._writing(step):
            return self.manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                force=force)

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turns a write that failed for lack of disk space (in Orbax's threads, raised here by the
        next save, `wait` or `close`) into one line that names the last complete checkpoint, which
        Orbax left as it was: the run stops rather than train on without checkpoints."""
        try:
            yield
        except Exception as e:  # tensorstore raises ValueError, the file system OSError
            if not _no_space(e):
                raise
            failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))
            failed_step = int(failed.group(1)) if failed else step
            intact = max((s for s in self._complete_steps() if s != failed_step), default=None)
            kept = (f"checkpoint {intact} is complete and the run resumes from it" if intact is not None
                    else "no earlier checkpoint exists, so the run starts again from step 0")
            what = f"checkpoint {failed_step}" if failed_step is not None else "a checkpoint"
            raise UserError(f"{what} could not be written to "
                            f"{self.directory}: no space left on device; training stopped. {kept} when the "
                            f"same command is rerun with space freed") from None

    def _complete_steps(self) -> list[int]:
        """Steps whose directories Orbax finalised (renamed from their temporary names)."""
        if not self.directory.is_dir():
            return []
        return [int(p.name) for p in self.directory.iterdir() if p.name.isdigit()]

    def due(self, step: int) -> bool:
        """Whether `save(step, ...)` would save (its interval, or a preemption all processes
        reached); the loop then builds the state to save only when it is."""
        return self.manager.should_save(step)

    def save_final(self, step: int, state, data_state: dict) -> None:
        """Saves `step` unless a checkpoint of it exists already (a resumed, finished run)."""
        if step not in self.all_steps():
            self.save(step, state, data_state, force=True)

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, step: int, abstract_state):
        """Restores (state, data_state) at `step` onto the shardings of `abstract_state`; a
        checkpoint that cannot be read (damaged, or of another model) is a UserError."""
        try:
            saved_fields = set(ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state").tree)
            missing = {name: value for name, value in ADDED_FIELDS.items() if name not in saved_fields}
            target = abstract_state if not missing else {
                f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
                if f.name not in missing}
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except Exception as e:  # tensorstore raises bare Exceptions; every failure means the same here
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"checkpoint {step} in {self.directory} cannot be restored ({reason})") from e
        state = restored.state
        if missing:  # an older checkpoint: the fields it lacks get the values they had then
            state = abstract_state.replace(**state, **{
                name: jax.device_put(np.asarray(value, getattr(abstract_state, name).dtype),
                                     getattr(abstract_state, name).sharding) for name, value in missing.items()})
        return state, restored.data

    def restore_newest_readable(self, abstract_state, warn):
        """(state, data_state) of the newest checkpoint that restores, or None when there
        are none. Newer steps that fail, while an older one restores, are damaged: each is
        reported through `warn(line)` and moved (not deleted) to UNREADABLE. When no step
        restores, nothing is moved: the config, not the files, is the likely cause."""
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data_state = self.restore(step, abstract_state)
            except UserError as e:
                failures.append((step, e))
                continue
            for bad_step, error in failures:
                moved_to = self._set_aside(bad_step)
                warn(f"{error}; moved it to {moved_to} and resuming from checkpoint {step}")
            return state, data_state
        if failures:
            raise failures[0][1]
        return None

    def _set_aside(self, step: int) -> Path:
        destination = self.directory.parent / UNREADABLE / f"{step}-{int(time.time())}"
        if jax.process_index() == 0:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(destination))
        multihost_utils.sync_global_devices(f"flax_lm set aside checkpoint {step}")
        self.manager.reload()
        return destination

    def wait(self) -> None:
        """Blocks until pending asynchronous writes are durable (a UserError where one ran out
        of disk space)."""
        with self._writing(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._writing(None):
            self.manager.close()


def _no_space(error: BaseException) -> bool:
    """Whether `error` (or one it came from) is a write that found the disk full: ENOSPC from the
    file system, or tensorstore's RESOURCE_EXHAUSTED wording of it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if any(words in text for words in ("No space left on device", "Disk quota exceeded",
                                            f"os_error_code='{errno.ENOSPC}'")):
            return True
        error = error.__cause__ or error.__context__
    return False


class _QuietAboutFullDisk(logging.Filter):
    """Drops Orbax's log records (with tracebacks, from its writing threads) of a write that
    found the disk full, and asyncio's "Task exception was never retrieved" of the same write's
    other fragments (logged as the process exits): the same error reaches the train loop, which
    says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None and _no_space(record.exc_info[1]))


for _logger in ("absl", "asyncio"):
    logging.getLogger(_logger).addFilter(_QuietAboutFullDisk())


def _save_policy(save_every: int):
    """Saves every `save_every` steps and where a preemption was signalled; the loop saves the last
    step itself. Not Orbax's default, which also saves the first step of a new run: a short run kept
    `checkpoints/1` beside its final step, and a long one a checkpoint of an untrained model."""
    policies = ocp.checkpoint_managers
    return policies.AnySavePolicy([policies.FixedIntervalPolicy(save_every),
                                   policies.PreemptionCheckpointingPolicy()])


@functools.cache
def _save_whole_arrays_within_one_process() -> None:
    """Orbax saves a replicated array replica-parallel: each replica copies one slice of it to the
    host, so that the hosts share the writing. With one process there is no one to share with, and
    each slice is one more op dispatched on the train loop's thread (gpt2_tiny's state on 8 CPU
    devices: 680 slices, 0.13 s, at every save). Several processes keep Orbax's default; restoring
    is the same either way."""
    if jax.process_count() > 1:
        return
    try:  # private: the metadata store Orbax's default handler has; an Orbax without it keeps its default
        from orbax.checkpoint._src.metadata.array_metadata_store import Store
    except ImportError:
        return
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax warns of the override, which is meant, on stderr
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False, array_metadata_store=Store()),
            override=True)
    finally:
        absl_logger.setLevel(level)


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying shardings, the restore target Orbax expects."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
