"""How train steps run on the devices: `parallel.strategy`.

jit (default): one program over the ("data", "fsdp", "tensor") mesh. The state keeps its logical
shardings and batches become global arrays split over the batch axes (`train_step.jit_train_step`).

pmap: pure data parallelism with `jax.pmap` over the local devices (collectives reach every
device of every process). Each device holds a whole copy of the state, stacked on a leading
axis of size `jax.local_device_count()`, takes its own rows of the batch and the step sums the
gradients over the devices (`make_train_step(axis_name=...)`).

Outside the step, the state always has the jit layout (checkpoints, evaluation, sampling), so
checkpoints of both strategies are the same and a run may change strategy when it resumes.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flax_lm.parallel import sharding
from flax_lm.training.train_step import jit_train_step, make_train_step

PMAP_AXIS = "devices"


class JitSteps:
    """Train steps of the jit strategy; the state stays in the layout `shardings` gives."""

    def __init__(self, model, task, tx, schedule, train_cfg, mesh, shardings):
        self.mesh = mesh
        self.step = jit_train_step(model, task, tx, schedule, train_cfg, mesh, shardings)

    def place(self, state):
        """The jit-layout `state` as the step takes it."""
        return state

    def global_state(self, state):
        """The step's `state` in the jit layout (checkpoints, evaluation)."""
        return state

    def __call__(self, state, host_batch: dict):
        """One step on this process's rows of the global batch -> (state, metrics on device)."""
        with sharding.activate(self.mesh):
            return self.step(state, sharding.process_batch_to_global(host_batch, self.mesh))


class PmapSteps:
    """Train steps of the pmap strategy; the state is replicated with a leading device axis."""

    def __init__(self, model, task, tx, schedule, train_cfg, mesh, shardings):
        del mesh  # pmap maps over the local devices; `shardings` (of the jit layout) must replicate
        self.shardings = shardings
        self.devices = jax.local_devices()
        # The stacked layout pmap uses for its inputs on this process: device i holds row i.
        self.stacked = NamedSharding(jax.sharding.Mesh(np.array(self.devices), (PMAP_AXIS,)),
                                     PartitionSpec(PMAP_AXIS))
        self.step = jax.pmap(
            make_train_step(model, task, tx, schedule, train_cfg.grad_accum_steps, train_cfg.nonfinite_policy,
                            axis_name=PMAP_AXIS),
            axis_name=PMAP_AXIS, donate_argnums=0)

    def place(self, state):
        """jit layout (every array whole on every device, as fsdp = tensor = 1) -> one copy per
        local device stacked on a new leading axis, made from the copies already there."""
        def stack(x):
            local = {shard.device: shard.data for shard in x.addressable_shards}
            return jax.make_array_from_single_device_arrays(
                (len(self.devices), *x.shape), self.stacked, [local[d][None] for d in self.devices])
        return jax.tree.map(stack, state)

    def global_state(self, state):
        """The replicated state -> the jit layout of `shardings` (the copies are equal; each device
        keeps its own, nothing moves between devices)."""
        def unstack(x, target):
            local = {shard.device: shard.data for shard in x.addressable_shards}
            return jax.make_array_from_single_device_arrays(
                x.shape[1:], target, [local[d][0] for d in target.addressable_devices])
        return jax.tree.map(unstack, state, self.shardings)

    def __call__(self, state, host_batch: dict):
        """One step; this process's rows (B_local, ...) are split as (devices, B_local / devices, ...)."""
        n = len(self.devices)
        batch = {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in host_batch.items()}
        state, metrics = self.step(state, batch)
        return state, jax.tree.map(lambda x: x[0], metrics)  # equal on every device after the psum


def make_steps(cfg, model, task, tx, schedule, mesh, shardings) -> JitSteps | PmapSteps:
    """The train steps of a run's config, by its `parallel.strategy` (see flax_lm.training.build)."""
    kind = PmapSteps if cfg.parallel.strategy == "pmap" else JitSteps
    return kind(model, task, tx, schedule, cfg.train, mesh, shardings)
