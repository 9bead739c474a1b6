"""Native CPU kernels over bfloat16 weights for decoding: a product of a few rows with a bfloat16
matrix, one of many rows, and the rows of a bfloat16 table.

Decoding one token at a time reads every weight once a step, so at batch 1 a step can be no
faster than its weights stream from memory: gpt2_small's 124M weights are 248 MB in bfloat16.
XLA:CPU multiplies a few rows by a bfloat16 matrix far below that rate: 1.3 GB/s as it is,
12 GB/s padded to 4 rows (`few_rows`), and a float32 copy of the weights reads twice the bytes
(`few_rows.widened`: 28-33 GB/s of float32). This kernel (bf16_kernels.cc, an XLA FFI handler)
widens each bfloat16 weight to float32 in registers and sums in float32, as the float32 copy
does; on a 2-core AMD EPYC it reads gpt2_small's 50257 x 768 output embedding in 2.2 ms
(35 GB/s of bfloat16) against 4.6-5.3 ms for its float32 copy.

XLA:CPU also gathers rows from a bfloat16 table, or slices one, by converting all of it to
float32 first, and from the table's bits as 16-bit integers by copying all of them (gpt2_small:
17 ms a `generate` call); `take` copies only the rows.

Many rows at a time (a batch of sequences, a prompt's tokens) make the products bound by
arithmetic instead: XLA:CPU's bfloat16 product of 32 rows made 120-260 GFLOP/s of gpt2_small's
kernels on 2 Zen 4 cores. Where the CPU has AVX512-BF16, `dots` multiplies them by its bfloat16
dot-product instruction (VDPBF16PS), at 350-430. There, `attend` also runs a decoding step's
attention (one query row a head) as one call: XLA:CPU's batched products of so few rows took
a quarter of a gpt2_small step at batch 1 and a third at batch 32.

It is built the first time it is needed, with the host's C++ compiler (`CXX`, else `c++`), for
this CPU (-march=native), into `FLAX_LM_CACHE` (else ~/.cache/flax_lm), once per source,
jaxlib, compiler and CPU. Where that fails (no compiler), decoding keeps float32 copies of the
weights instead, after one warning; FLAX_LM_NATIVE=0 does the same without trying.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from flax_lm import hardware, sharding

SOURCE = Path(__file__).with_suffix(".cc")
TARGET = "flax_lm_bf16_rows"
TAKE_TARGET = "flax_lm_bf16_take"
DOTS_TARGET = "flax_lm_bf16_dots"
ATTEND_TARGET = "flax_lm_bf16_attend"
TARGETS = {TARGET: "Bf16Rows", TAKE_TARGET: "Bf16Take", DOTS_TARGET: "Bf16Dots",  # XLA's names: the library's
           ATTEND_TARGET: "Bf16Attend"}
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")

log = logging.getLogger(__name__)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels' shared library, built (or found built) and its kernels registered with XLA for
    the CPU; None where it cannot be built. Tried once a process; a failure is logged once."""
    if os.environ.get("FLAX_LM_NATIVE", "1") == "0":
        return None
    try:
        loaded = ctypes.CDLL(str(built(cache_dir())))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("the native bfloat16 kernel could not be built, so decoding a few rows in bfloat16 on "
                    "CPU keeps float32 copies of the weights (slower, more memory): %s", error)
        return None
    for target, symbol in TARGETS.items():
        if hasattr(loaded, symbol):  # Bf16Dots and Bf16Attend are built only for a CPU with AVX512-BF16
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(loaded, symbol)), platform="cpu")
    return loaded


def available() -> bool:
    """Whether the kernels are built and registered (`library`)."""
    return library() is not None


def has_avx512_bf16() -> bool:
    """Whether the kernels that use AVX512-BF16 (`dots`, `attend`) are built too: where the compiler
    targets it."""
    return available() and hasattr(library(), TARGETS[DOTS_TARGET])


def runs(dtype) -> bool:
    """Whether the program being traced runs the kernels on arrays of `dtype`: bfloat16, on CPU,
    on one device (XLA cannot split a kernel's call over a mesh), where they can be built."""
    if jnp.dtype(dtype) != jnp.bfloat16 or sharding.target_platform() != "cpu":
        return False
    mesh = jax.sharding.get_abstract_mesh()
    return (mesh.empty or mesh.size == 1) and available()


def cache_dir() -> Path:
    """Where built kernels are kept: FLAX_LM_CACHE, else flax_lm under XDG_CACHE_HOME or ~/.cache."""
    if "FLAX_LM_CACHE" in os.environ:
        return Path(os.environ["FLAX_LM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flax_lm"


def built(directory: Path) -> Path:
    """The kernel's shared library in `directory`, compiled there first if it is not yet. The
    name holds a hash of all that the binary depends on; a finished library appears under it
    at once (a rename), so processes building it side by side never load half of one."""
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    command = [*compiler, *FLAGS, "-I", jax.ffi.include_dir()]
    cpu = sorted(hardware.cpu_flags())
    key = "\0".join([SOURCE.read_text(), jaxlib.__version__, *command, platform.machine(), *cpu])
    library = directory / f"bf16_kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(f".{os.getpid()}.partial")
    try:
        done = subprocess.run([*command, str(SOURCE), "-o", str(partial)], capture_output=True, text=True,
                              timeout=600)
        if done.returncode:
            raise subprocess.SubprocessError(f"{shlex.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(partial, library)
    finally:
        partial.unlink(missing_ok=True)
    return library


def rows_times(x_RxI: jax.Array, kernel_FxI: jax.Array) -> jax.Array:
    """x_RxI . kernel_FxI^T in float32: rows by a bfloat16 (out, in) matrix (`runs` must hold).
    Its cost is the matrix's bytes, read once for every 4 rows: for a few rows. Its gradient is
    the plain products' (a tied output head in training with so few rows)."""
    return _times(x_RxI.astype(jnp.float32), kernel_FxI, TARGET)


def dots(x_RxI: jax.Array, kernel_FxI: jax.Array) -> jax.Array:
    """`rows_times` for any number of rows, by the CPU's bfloat16 dot products (`runs` and
    `has_avx512_bf16` must hold): x in bfloat16, the matrix read once for every 64 rows. With many rows
    it multiplies at 350-430 GFLOP/s on 2 Zen 4 cores, where XLA:CPU's bfloat16 product of 32
    rows made 120-260 (gpt2_small's kernels)."""
    return _times(x_RxI.astype(jnp.bfloat16), kernel_FxI, DOTS_TARGET)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _times(x_RxI, kernel_FxI, target: str):
    out = jax.ShapeDtypeStruct((x_RxI.shape[0], kernel_FxI.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(target, out)(x_RxI, kernel_FxI.astype(jnp.bfloat16))


def _times_fwd(x_RxI, kernel_FxI, target):
    return _times(x_RxI, kernel_FxI, target), (x_RxI, kernel_FxI)


def _times_bwd(target, residuals, dy_RxF):
    x_RxI, kernel_FxI = residuals
    dx_RxI = jnp.dot(dy_RxF, kernel_FxI.astype(jnp.float32))
    dkernel_FxI = jnp.dot(dy_RxF.T, x_RxI.astype(jnp.float32))
    return dx_RxI.astype(x_RxI.dtype), dkernel_FxI.astype(kernel_FxI.dtype)


_times.defvjp(_times_fwd, _times_bwd)


def attend(q_XxTxH: jax.Array, k_XxSxH: jax.Array, v_XxSxH: jax.Array, add_AxTxS: jax.Array) -> jax.Array:
    """softmax(q . k^T + add) . v of X products in float32, q, k and v in bfloat16 (`runs` and
    `has_avx512_bf16` must hold): product x adds row x // (X / A) of `add` (a mask of 0 and a large
    negative number, and any bias) to its scores; its probabilities are rounded to bfloat16 before
    they weigh v, as `attention`'s XLA form does. For a few query rows T over a decoding cache:
    gpt2_small's 12 heads of one query against 96 keys at batch 32 take 0.2 ms where XLA:CPU's
    batched products took 1.7. No gradient: decoding's."""
    out = jax.ShapeDtypeStruct(q_XxTxH.shape, jnp.float32)
    return jax.ffi.ffi_call(ATTEND_TARGET, out)(q_XxTxH, k_XxSxH, v_XxSxH, add_AxTxS.astype(jnp.float32))


def take(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
    """The bfloat16 table's rows `ids` (`jnp.take` on axis 0; `runs` must hold): ids.shape x D. An
    id out of range fails the program (the model's callers refuse such ids first)."""
    out = jax.ShapeDtypeStruct((ids.size, table_VxD.shape[1]), jnp.bfloat16)
    rows_NxD = jax.ffi.ffi_call(TAKE_TARGET, out)(table_VxD, ids.reshape(-1).astype(jnp.int32))
    return rows_NxD.reshape(*ids.shape, table_VxD.shape[1])
