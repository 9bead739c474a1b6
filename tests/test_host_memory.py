"""Huge pages for host memory on a CPU: the programs start again with glibc's tunable, and a
freed and reallocated block then faults in 2 MiB at a time."""

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
def test_with_the_tunable_a_reallocated_block_faults_in_huge_pages():
    assert int(_run(_SECOND_ALLOCATION_FAULTS, {"PATH": ""})) > 50_000  # 65,536 pages of 4 KiB
    assert int(_run(_SECOND_ALLOCATION_FAULTS, {"GLIBC_TUNABLES": host_memory.TUNABLE})) < 1_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_a_program_starts_again_once_with_the_tunable():
    code = ("import os; from flax_lm import host_memory; print('start', flush=True); "
            "host_memory.restart_with_huge_pages(); print(os.environ.get('GLIBC_TUNABLES'))")
    out = _run(code, {"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert out.splitlines() == ["start", "start", f"glibc.malloc.arena_max=4:{host_memory.TUNABLE}"]
    assert _run(code, {"JAX_PLATFORMS": "cuda"}).splitlines() == ["start", "None"]


@pytest.mark.parametrize("platforms,devices,expected", [
    ("cpu", ["/dev/nvidia0"], True), ("cuda,cpu", [], False), ("tpu", [], False),
    ("", [], True), ("", ["/dev/nvidia0"], False), ("", ["/dev/accel0"], False), ("", ["/dev/vfio/0"], False),
])
def test_only_a_cpu_run_gets_the_tunable(platforms, devices, expected, monkeypatch):
    monkeypatch.setattr(host_memory.glob, "glob",
                        lambda pattern: [d for d in devices if d.startswith(pattern.split("[")[0])])
    environ = {"JAX_PLATFORMS": platforms}
    assert (host_memory.huge_page_environment(environ) is not None) == expected
    if expected:
        assert host_memory.huge_page_environment(host_memory.huge_page_environment(environ)) is None
