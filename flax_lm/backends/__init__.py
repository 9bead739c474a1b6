"""Platform differences behind one boundary.

Models, attention dispatch, losses, the train step and generation ask `current()` for what
differs between platforms (which attention "auto" means, how a skipped step keeps its state,
how a scan over layers is unrolled, ...) and read the same on every platform. This module is
the one place that chooses the backend: from the ambient mesh's devices, which are a TPU
topology's when compiling ahead of time on another machine, else from JAX's default backend.
"""

import jax

from flax_lm.backends import cpu, tpu
from flax_lm.backends.base import Backend
from flax_lm.backends.cpu import CpuBackend
from flax_lm.backends.gpu import GpuBackend
from flax_lm.backends.tpu import TpuBackend

_BY_PLATFORM = {"cpu": CpuBackend(), "gpu": GpuBackend(), "tpu": TpuBackend()}
_PORTABLE = Backend()


def platform() -> str:
    """The platform the traced program is for: the ambient mesh's (a TPU topology's when compiling
    ahead of time), else the default backend's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return jax.default_backend() if device is None else device.platform


def current() -> Backend:
    """The backend of the program being traced (see `platform`); an unknown platform gets the
    portable XLA forms."""
    return for_platform(platform())


def for_platform(name: str) -> Backend:
    """The backend of platform `name` ("cpu", "gpu", "tpu", ...)."""
    return _BY_PLATFORM.get(name, _PORTABLE)


def self_discovering_cluster() -> str | None:
    """What this machine is, for log lines ("TPU VM"), where it is a worker of a cluster whose
    processes `jax.distributed.initialize()` finds with no arguments; else None."""
    return "TPU VM" if tpu.on_tpu_vm() else None


def before_explicit_cluster() -> None:
    """Whatever a platform needs before `jax.distributed.initialize` joins processes given by
    address (--coordinator): CPU processes need a cross-process collectives implementation."""
    cpu.use_cross_process_collectives()
