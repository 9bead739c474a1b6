"""Host memory for training on a CPU: the programs start again with glibc's tunables, a freed
and reallocated block then faults in no page, and XLA:CPU's step temporaries are kept likewise."""

import subprocess
import sys
from pathlib import Path

import pytest

from flax_lm import host_memory

# Allocates, fills and frees a 256 MiB block twice with malloc; prints the page faults of the
# second time. (Not numpy: it asks for huge pages itself for its large arrays, which XLA does not.)
_SECOND_ALLOCATION_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 1 << 28
def fill():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _run(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


@pytest.mark.skipif(not _THP.exists() or "[never]" in _THP.read_text(), reason="no transparent huge pages")
def test_with_the_tunables_a_reallocated_block_is_kept():
    assert int(_run(_SECOND_ALLOCATION_FAULTS, {"PATH": ""})) > 50_000  # 65,536 pages of 4 KiB
    huge_pages_only = {"GLIBC_TUNABLES": host_memory.TUNABLES[0]}
    assert 100 < int(_run(_SECOND_ALLOCATION_FAULTS, huge_pages_only)) < 1_000  # 128 pages of 2 MiB
    assert int(_run(_SECOND_ALLOCATION_FAULTS, {"GLIBC_TUNABLES": ":".join(host_memory.TUNABLES)})) < 10


# A restarted program whose jitted computation holds a 256 MiB temporary (exp(x), gathered
# from): the page faults of each of its last five calls of eight (the heap settles in the first
# three), and whether XLA:CPU dispatches asynchronously.
_STEP_FAULTS = """
import resource
from flax_lm import host_memory
host_memory.restart_for_cpu_training()
import jax, jax.numpy as jnp
x = jnp.linspace(0.0, 1.0, 1 << 26)
f = jax.jit(lambda x: jnp.exp(x)[::-1][:-1].sum())
faults = []
for i in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults[3:], jax.config.values["jax_cpu_enable_async_dispatch"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_a_restarted_program_keeps_its_computations_temporaries():
    """XLA:CPU runs the computation on the main thread, whose heap keeps the block it frees (a
    worker thread's heap gives a block over 64 MB back, and each call faulted in 640 pages). A
    call may still find its block taken back by the kernel now and then (once, in the full
    suite, a call made 128 faults: the block's 2 MiB pages), so most calls, not all, make none."""
    *faults, dispatches_asynchronously = _run(_STEP_FAULTS, {"JAX_PLATFORMS": "cpu"}).split()
    assert dispatches_asynchronously == "False"
    assert sorted(map(int, faults))[2] < 10, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_a_program_starts_again_once_with_the_tunable():
    code = ("import os; from flax_lm import host_memory; print('start', flush=True); "
            "host_memory.restart_for_cpu_training(); print(os.environ.get('GLIBC_TUNABLES'))")
    out = _run(code, {"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert out.splitlines() == ["start", "start", ":".join(["glibc.malloc.arena_max=4", *host_memory.TUNABLES])]
    assert _run(code, {"JAX_PLATFORMS": "cuda"}).splitlines() == ["start", "None"]


@pytest.mark.parametrize("platforms,devices,expected", [
    ("cpu", ["/dev/nvidia0"], True), ("cuda,cpu", [], False), ("tpu", [], False),
    ("", [], True), ("", ["/dev/nvidia0"], False), ("", ["/dev/accel0"], False), ("", ["/dev/vfio/0"], False),
])
def test_only_a_cpu_run_gets_the_tunable(platforms, devices, expected, monkeypatch):
    monkeypatch.setattr(host_memory.glob, "glob",
                        lambda pattern: [d for d in devices if d.startswith(pattern.split("[")[0])])
    environ = {"JAX_PLATFORMS": platforms}
    assert (host_memory.cpu_training_environment(environ) is not None) == expected
    if expected:
        assert host_memory.cpu_training_environment(host_memory.cpu_training_environment(environ)) is None
