"""Host memory kept mapped between steps on a CPU: freed blocks come back without page faults."""

import subprocess
import sys

import pytest

from flax_lm import host_memory

# Allocates, fills and frees a 256 MiB block twice with malloc; prints the page faults of the second
# time. (Not numpy: it asks for huge pages for its large arrays, which XLA does not.)
_SECOND_ALLOCATION_FAULTS = """
import ctypes, resource, sys
from flax_lm import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
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


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SECOND_ALLOCATION_FAULTS, mode], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_block_comes_back_without_page_faults():
    assert _faults("default") > 50_000  # 65,536 pages of 4 KiB, mapped afresh
    assert _faults("keep") < 1_000


@pytest.mark.parametrize("platforms,devices,expected", [
    ("cpu", ["/dev/nvidia0"], True), ("cuda,cpu", [], False), ("tpu", [], False),
    ("", [], True), ("", ["/dev/nvidia0"], False), ("", ["/dev/accel0"], False), ("", ["/dev/vfio/0"], False),
])
def test_only_a_cpu_run_changes_malloc(platforms, devices, expected, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(host_memory.glob, "glob",
                        lambda pattern: [d for d in devices if d.startswith(pattern.split("[")[0])])
    assert host_memory.computes_on_cpu() == expected
