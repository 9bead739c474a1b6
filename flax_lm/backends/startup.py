"""Which JAX platforms a `flax-lm` process may start, chosen once before JAX starts a backend.

With no JAX_PLATFORMS set, JAX initialises every backend it finds, and where `jax[tpu]` is
installed that includes libtpu, which on a machine without TPU chips prints five lines of
warnings to stderr ("could not determine TPU accelerator type", "unexpected worker hostname")
before JAX falls back to the CPU. A process only reaches accelerator chips through their device
files, so where there are none the CPU is the only platform and JAX is told so; where there are
any (a TPU VM, a GPU box), or the user set JAX_PLATFORMS, JAX's own choice stands.
"""

import glob
import os
import sys

# NVIDIA GPUs (and WSL's), AMD GPUs, TPU chips: /dev/accel* (v4, v5p), VFIO groups (v5e, v6e, later)
ACCELERATOR_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def choose_platforms(environ=os.environ) -> None:
    """Sets JAX_PLATFORMS=cpu in `environ` where it is unset and the machine has no accelerator
    device files. Call before JAX is imported; processes this one starts inherit the choice."""
    if not environ.get("JAX_PLATFORMS") and not any(glob.glob(p) for p in ACCELERATOR_DEVICE_FILES):
        environ["JAX_PLATFORMS"] = "cpu"
        if "jax" in sys.modules:  # jax read the variable when it was imported (this package imports it)
            sys.modules["jax"].config.update("jax_platforms", "cpu")
