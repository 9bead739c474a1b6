"""Host memory for training when JAX computes on the CPU: huge pages, and a step's memory kept.

XLA:CPU allocates each step's temporaries as one block and frees it when the step ends
(1.4 GB for bert_base at batch 8). glibc's malloc takes a block that large straight from the
kernel and gives it back on free, so every 4 KiB page of it faults in again at every step: for
bert_base, 350,000 page faults and 0.55 s of kernel time a step. With the `glibc.malloc.hugetlb`
tunable, malloc asks for transparent huge pages, which fault in 2 MiB at a time: 1,300 faults a
step, and the train step 2.70 -> 2.35 s.

Memory given back is still a cost where the kernel hands it to the host once it has lain free for
a moment, as a VM with free page reporting does (the 2-core Firecracker VMs here): the first step
after a pause of a few seconds (an evaluation, a checkpoint, the other side's turn in a benchmark)
spent 3.1-4.1 s in the kernel for the same 740 faults, bert_base's step 3.6 -> 5.2 s. So malloc
also keeps what is freed (`glibc.malloc.mmap_max=0`, and no trimming): a block comes from the heap
and goes back to it. Only the main thread's heap holds a block over 64 MB (another thread's falls
back to the kernel's), so XLA:CPU runs each single-device computation on the thread that calls it
(`jax_cpu_enable_async_dispatch` off): bert_base then makes no page fault a step, before or after a
pause (3.4-3.5 s back to back, 3.7-4.1 s after 5 s), and `flax-lm train` of gpt2_tiny makes 5% more
tokens a second. The process keeps its peak memory for its life, as a training process needs it
again at every step.

glibc reads its tunables only when a process starts, so `flax-lm train` and the training
benchmarks start themselves again with them set. Decoding is left without: with huge pages,
gpt2_small's greedy decoding at batch 1 fell from 37 to 28 tokens/s.

One arena for all threads (`mallopt`) also kept freed memory, but PyTorch's threads then queued
for malloc: its bf16 step took twice as long.
"""

import glob
import os
import sys

TUNABLES = ("glibc.malloc.hugetlb=1",  # madvise(MADV_HUGEPAGE) on malloc's memory (glibc 2.35+)
            "glibc.malloc.mmap_max=0",  # every block from a heap, none mapped for itself
            f"glibc.malloc.trim_threshold={1 << 40}")  # nothing freed goes back to the kernel
_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")  # GPUs, TPUs


def computes_on_cpu(environ) -> bool:
    """Whether JAX will compute on the CPU, decided without starting JAX: JAX_PLATFORMS names
    the CPU first, or it is unset and the machine has no GPU or TPU device files."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def cpu_training_environment(environ) -> dict | None:
    """`environ` with TUNABLES added to GLIBC_TUNABLES, or None where they are set already, or
    JAX will not compute on the CPU (XLA's temporaries live on the device), or the system is not
    Linux."""
    if not _glibc_on_cpu(environ) or _has_tunables(environ):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (environ.get("GLIBC_TUNABLES", ""), *TUNABLES)))}


def _glibc_on_cpu(environ) -> bool:
    return sys.platform.startswith("linux") and computes_on_cpu(environ)


def _has_tunables(environ) -> bool:
    return set(TUNABLES) <= set(environ.get("GLIBC_TUNABLES", "").split(":"))


def restart_for_cpu_training() -> None:
    """Starts this program again, the same command line, with TUNABLES, when
    `cpu_training_environment` says so; else returns, and where the tunables are in force and JAX
    computes on the CPU, turns off XLA:CPU's asynchronous dispatch, so that a computation's
    temporaries come from the calling thread's heap, which keeps them. Call it first thing in a
    program's entry point, before JAX has started, never from code a caller imports (it replaces
    the process)."""
    environ = cpu_training_environment(os.environ)
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
    if _glibc_on_cpu(os.environ) and _has_tunables(os.environ):
        import jax  # here, not above: the first process only starts the second
        jax.config.update("jax_cpu_enable_async_dispatch", False)
