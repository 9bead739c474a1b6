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
    devices = np.asarray(devices).ravel().tolist()
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    # On TPU the axes follow the chips' physical torus; an axis of 2 on a 4x4 slice splits one of its sides.
    if slices == 1:
        device_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    else:
        device_array = mesh_utils.create_hybrid_device_mesh(
            *_within_and_across_slices(shape, slices), devices=devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(device_array, MESH_AXES)


def _within_and_across_slices(shape: tuple[int, int, int], slices: int) -> tuple[tuple, tuple]:
    """(ICI shape, DCN shape) of a multi-slice mesh. The slow links between slices get the data
    axis when the slices divide it (one gradient all-reduce a step crosses them), else fsdp (whose
    parameter all-gathers then cross them too); tensor parallelism always stays within a slice."""
    data, fsdp, tensor = shape
    if data % slices == 0:
        return (data // slices, fsdp, tensor), (slices, 1, 1)
    if fsdp % slices == 0:
        return (data, fsdp // slices, tensor), (1, slices, 1)
    raise UserError(f"the {slices} slices must divide parallel.data ({data}) or parallel.fsdp ({fsdp}): "
                    f"only data parallelism crosses slices")
