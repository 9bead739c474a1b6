"""The device mesh ("data", "fsdp", "tensor") built from the `parallel` config."""

import math

import jax
import numpy as np
from jax.experimental import mesh_utils

from flax_lm.errors import UserError
from flax_lm.sharding import MESH_AXES


def mesh_shape(parallel_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves the axis sizes; one axis may be -1, meaning all remaining devices."""
    sizes = [parallel_cfg[name] for name in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"parallel sizes {dict(zip(MESH_AXES, sizes))}: each must be positive, at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % known:
            raise UserError(f"parallel sizes {dict(zip(MESH_AXES, sizes))} do not divide the {num_devices} devices")
        sizes[free[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"parallel sizes {dict(zip(MESH_AXES, sizes))} use {math.prod(sizes)} devices; {num_devices} are present")
    return tuple(sizes)


def make_mesh(cfg, devices=None) -> jax.sharding.Mesh:
    """Builds the mesh and checks the config against it (batch and heads must divide)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg.parallel, len(devices))
    data, fsdp, tensor = shape
    micro_batch = cfg.train.batch_size // cfg.train.grad_accum_steps
    if micro_batch % (data * fsdp):
        raise UserError(
            f"train.batch_size / train.grad_accum_steps = {micro_batch} sequences must be divisible by the "
            f"{data * fsdp} data-parallel devices (parallel.data={data} x parallel.fsdp={fsdp})")
    if cfg.model.n_heads % tensor:
        raise UserError(f"model.n_heads ({cfg.model.n_heads}) must be divisible by parallel.tensor ({tensor})")
    # On TPU the axes follow the chips' physical torus; an axis of 2 on a 4x4 slice splits one of its sides.
    device_array = mesh_utils.create_device_mesh(shape, devices=np.asarray(devices).ravel().tolist(),
                                                 allow_split_physical_axes=True)
    return jax.sharding.Mesh(device_array, MESH_AXES)
