"""The device mesh ("data", "fsdp", "tensor") built from the `parallel` config."""

import math

import jax
import numpy as np
from jax.experimental import mesh_utils

from flax_lm.errors import UserError
from flax_lm.parallel.sharding import MESH_AXES


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
    dcn = (cfg.parallel.dcn_data, cfg.parallel.dcn_fsdp)
    # On TPU the axes follow the chips' physical torus; an axis of 2 on a 4x4 slice splits one of its sides.
    if slices == 1:
        if max(dcn) > 1:
            raise UserError(f"parallel.dcn_data={dcn[0]}, parallel.dcn_fsdp={dcn[1]} spread axes over several "
                            f"TPU slices, but the {len(devices)} devices form one slice; set both to 0")
        device_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    else:
        device_array = mesh_utils.create_hybrid_device_mesh(
            *_within_and_across_slices(shape, slices, *dcn), devices=devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(device_array, MESH_AXES)


def _within_and_across_slices(shape: tuple[int, int, int], slices: int, dcn_data: int = 0,
                              dcn_fsdp: int = 0) -> tuple[tuple, tuple]:
    """(ICI shape, DCN shape) of a multi-slice mesh, each (data, fsdp, tensor) sizes whose
    products are the mesh's `shape`; the DCN shape's product is `slices`.

    `dcn_data` / `dcn_fsdp` (parallel.dcn_*) say how many slices each axis spans; 0 is automatic,
    or the rest of the slices when the other one is set. Automatically, the slow links between
    slices get the data axis when the slices divide it (one gradient all-reduce a step crosses
    them), else fsdp (whose parameter all-gathers then cross them too); tensor parallelism always
    stays within a slice."""
    data, fsdp, tensor = shape
    if dcn_data or dcn_fsdp:
        return _explicit_dcn(shape, slices, dcn_data, dcn_fsdp)
    if data % slices == 0:
        return (data // slices, fsdp, tensor), (slices, 1, 1)
    if fsdp % slices == 0:
        return (data, fsdp // slices, tensor), (1, slices, 1)
    raise UserError(f"the {slices} slices must divide parallel.data ({data}) or parallel.fsdp ({fsdp}): "
                    f"tensor parallelism stays within a slice")


def _explicit_dcn(shape: tuple[int, int, int], slices: int, dcn_data: int, dcn_fsdp: int) -> tuple[tuple, tuple]:
    """_within_and_across_slices with parallel.dcn_data / dcn_fsdp set (at least one of them)."""
    data, fsdp, tensor = shape
    given = f"parallel.dcn_data={dcn_data}, parallel.dcn_fsdp={dcn_fsdp}"
    if not (dcn_data and dcn_fsdp) and slices % (dcn_data or dcn_fsdp):
        raise UserError(f"{given}: {dcn_data or dcn_fsdp} does not divide the {slices} slices")
    dcn_data, dcn_fsdp = dcn_data or slices // dcn_fsdp, dcn_fsdp or slices // dcn_data
    if dcn_data * dcn_fsdp != slices:
        raise UserError(f"{given}: their product must be the number of slices, {slices}")
    for name, size, across in (("data", data, dcn_data), ("fsdp", fsdp, dcn_fsdp)):
        if size % across:
            raise UserError(f"{given}: parallel.{name} ({size}) does not split evenly over the {across} slices "
                            f"it spans")
    return (data // dcn_data, fsdp // dcn_fsdp, tensor), (dcn_data, dcn_fsdp, 1)
