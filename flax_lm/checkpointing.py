"""Orbax checkpoints of the train state and the data iterator's position.

Each step directory holds two items: `state` (the TrainState pytree, saved sharded)
and `data` (JSON). Writes are asynchronous; Orbax finalises a step atomically, so a
step directory that exists is complete.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: Path, *, save_every: int, keep: int, async_writes: bool):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_writes),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving `step` if it is due (or `force`); returns whether it did."""
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=force)

    def save_final(self, step: int, state, data_state: dict) -> None:
        """Saves `step` unless a checkpoint of it exists already (a resumed, finished run)."""
        if step not in self.all_steps():
            self.save(step, state, data_state, force=True)

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, step: int, abstract_state):
        """Restores (state, data_state) at `step` onto the shardings of `abstract_state`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def wait(self) -> None:
        """Blocks until pending asynchronous writes are durable."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying shardings, the restore target Orbax expects."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
