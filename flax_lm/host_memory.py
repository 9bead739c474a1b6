"""Host memory that stays mapped from one step to the next when JAX computes on the CPU.

XLA:CPU allocates each step's temporaries as one block and frees it when the step ends
(1.4 GB for bert_base at batch 8). glibc's malloc takes a block that large straight from the
kernel and gives it back on free, so every page of it faults in again at every step: for
bert_base, 350,000 page faults and 0.55 s of kernel time a step. Asked to serve every block
from one heap and to keep what is freed, malloc hands the same pages back each step.
"""

import ctypes
import glob
import os

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")  # GPUs, TPUs


def computes_on_cpu() -> bool:
    """Whether JAX will compute on the CPU, decided without starting JAX: JAX_PLATFORMS names
    the CPU first, or it is unset and the machine has no GPU or TPU device files."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def keep_freed_memory() -> bool:
    """Makes glibc's malloc serve every block from its main heap and never return freed memory
    to the kernel, when JAX will compute on the CPU. Call it before JAX starts: a thread keeps
    the malloc arena of its first allocation. Returns whether the setting was made (not off
    glibc, nor on a machine with an accelerator, where XLA's temporaries live on the device).

    The cost: the process keeps the most memory it ever held (as with jemalloc or tcmalloc,
    which PyTorch recommends on CPUs), and its threads share one malloc arena."""
    if not computes_on_cpu():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1
               for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
