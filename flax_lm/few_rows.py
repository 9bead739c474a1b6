"""Products of a few rows in 16-bit on CPU, which decoding one token at a time makes.

XLA:CPU runs a bfloat16 product with fewer than 4 rows (a matrix-vector product) on a path
about 10x slower than the same product padded with zero rows to 4, which its bfloat16
kernels take (gpt2_small's 3072 x 768 kernels: 2.0 against 21 GB/s). Inside a decoding loop
it converted the weights to float32 once a call instead, and read them at that width at every
step. Padded, gpt2_small makes 64 tokens in bfloat16 in 1.05 s instead of 1.91 at batch 1,
and in 4.3 s instead of 6.1 at batch 32 (attention's products there have one query row per
head). Float32 products are left alone: their matrix-vector path is the fast one (30 GB/s
against 16-19 padded).

Padding pays on CPUs with AMX (the Xeon those figures come from). On a 2-core AMD EPYC (Zen 4)
XLA:CPU's padded bfloat16 product reads gpt2_small's output embedding at 12.5 GB/s, and its
float32 matrix-vector product at 28. Decoding a few rows there kept float32 copies of the
16-bit weights (`widened`) and multiplied in float32: the products of 16-bit values are exact
in float32 and are summed in float32 as the 16-bit product sums them, so the results are the
same up to the order of the sums. gpt2_small in bfloat16 at batch 1 made 45 tokens/s there
instead of 39; the prepared weights take 3 times their 16-bit size instead of about 2.

A bfloat16 product of a few rows now runs as a native kernel where one can be built
(`bf16_kernels`, `native`): it reads the 16-bit weights at the memory's rate and sums as the
float32 copies do. Padding stays for the rows of attention's products, and float32 copies for
float16 and for where the kernel cannot be built. Decoding's products of more rows run as a
native kernel too where the CPU has AVX512-BF16 and no AMX (`bf16_kernels.dots`), and where it
has AVX512-BF16, so does attention of a few query rows (`attends_natively`).
"""

import math

import jax
import jax.numpy as jnp

from flax_lm import bf16_kernels, sharding
from flax_lm.hardware import cpu_flags
from flax_lm.weight_grad import weight_grad

MIN_ROWS = 4


def extra(n: int, dtype, rows_each: int = 1) -> int:
    """How many entries to add to an axis of `n`, each `rows_each` rows of a product in
    `dtype`: enough to make MIN_ROWS rows for a 16-bit product on CPU, else none."""
    if n * rows_each >= MIN_ROWS or jnp.dtype(dtype).itemsize != 2 or sharding.target_platform() != "cpu":
        return 0
    return -(-MIN_ROWS // rows_each) - n


def native(dtype, rows: int) -> bool:
    """Whether a product of `rows` rows in `dtype` can run as a native kernel (where
    `bf16_kernels.runs`): fewer than MIN_ROWS rows as `bf16_kernels.rows_times`, more as
    `bf16_kernels.dots` where it is built, but not on a CPU with AMX, whose bfloat16 units
    XLA:CPU's own product may use (not measured against)."""
    if not bf16_kernels.runs(dtype):
        return False
    return rows < MIN_ROWS or (bf16_kernels.has_avx512_bf16() and "amx_bf16" not in cpu_flags())


def attends_natively(dtype, rows: int) -> bool:
    """Whether attention of `rows` query rows over a decoding cache runs as the native kernel
    (`bf16_kernels.attend`) instead of padded products: for fewer than MIN_ROWS rows in bfloat16,
    where the kernels for AVX512-BF16 are built."""
    return rows < MIN_ROWS and bf16_kernels.runs(dtype) and bf16_kernels.has_avx512_bf16()


def widened(dtype, rows: int) -> bool:
    """Whether decoding `rows` sequences at a time in `dtype` keeps float32 copies of its 16-bit
    weights: on CPU, for fewer than MIN_ROWS rows, unless the products run as the native kernel
    (`native`) or are bfloat16 on a CPU with AMX, where the padded 16-bit product is the fast one
    (see the module's note)."""
    dtype = jnp.dtype(dtype)
    if dtype.itemsize != 2 or rows >= MIN_ROWS or sharding.target_platform() != "cpu" or native(dtype, rows):
        return False
    return not (dtype == jnp.bfloat16 and "amx_bf16" in cpu_flags())


def rows_times(x_RxI: jax.Array, kernel_FxI: jax.Array, decoding: bool = False) -> jax.Array:
    """x_RxI . kernel_FxI^T, an (out, in) kernel, accumulated in float32, in the form that is fast
    for x's rows: a kernel wider than x (`widened`: float32 copies of 16-bit values) takes x
    widened to it; bfloat16 rows take a native kernel (`native`): a few always, many where
    `decoding` (a call over a key/value cache: training keeps XLA's products, with `_product`'s
    gradients); else the kernel is taken in x's dtype and x padded as `as_rows` does."""
    if kernel_FxI.dtype.itemsize > x_RxI.dtype.itemsize:
        return _product(x_RxI.astype(kernel_FxI.dtype), kernel_FxI)
    rows = x_RxI.shape[0]
    if native(x_RxI.dtype, rows) and rows < MIN_ROWS:
        return bf16_kernels.rows_times(x_RxI, kernel_FxI)
    if decoding and native(x_RxI.dtype, rows):
        return bf16_kernels.dots(x_RxI, kernel_FxI)
    x_RxI, restore = as_rows(x_RxI, 1)
    return restore(_product(x_RxI, kernel_FxI.astype(x_RxI.dtype)))


@jax.custom_vjp
def _product(x_RxI, kernel_FxI):
    """x . kernel^T accumulated in float32, differentiated with products of x's dtype, as
    `layers.contract` is: autodiff fed them the float32 cotangent, and XLA:CPU then multiplied
    float32 copies of the 16-bit operands (bert_base's tied MLM head in bf16: a float32 copy of its
    30522 x 768 table a step; its train step 6-8% faster without)."""
    return jax.lax.dot_general(x_RxI, kernel_FxI, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _product_fwd(x_RxI, kernel_FxI):
    return _product(x_RxI, kernel_FxI), (x_RxI, kernel_FxI)


def _product_bwd(residuals, dy_RxF):
    x_RxI, kernel_FxI = residuals
    dy_RxF = dy_RxF.astype(x_RxI.dtype)
    dx = jnp.dot(dy_RxF, kernel_FxI, preferred_element_type=jnp.float32).astype(x_RxI.dtype)
    # as F x I directly: XLA:CPU folded the transpose of an I x F weight_grad(x, dy) into the product,
    # and then had no bf16 kernel for it (DotThunk: "BF16 x BF16 = F32" unsupported)
    return dx, weight_grad(dy_RxF, x_RxI).astype(kernel_FxI.dtype)


_product.defvjp(_product_fwd, _product_bwd)


def as_rows(x: jax.Array, n_in: int):
    """(x, restore) for a product over x's last `n_in` axes: x as it is and `restore` the
    identity, or, where it needs more rows, x flattened to R x *in and padded with zero rows,
    and `restore` taking a result of those rows back to (*rows, *out) without the padding.
    (A padded product of three or more dimensions did not take the fast path.)"""
    rows = x.shape[:x.ndim - n_in]
    r = math.prod(rows)
    count = extra(r, x.dtype)
    if not count:
        return x, lambda y: y
    x_Rx = pad(x.reshape(r, *x.shape[len(rows):]), 0, count)
    return x_Rx, lambda y: cut(y, 0, r).reshape(*rows, *y.shape[1:])


def pad(x: jax.Array, axis: int, count: int, mode: str = "constant") -> jax.Array:
    """x with `count` more entries at the end of `axis`: zeros, or copies of the last entry
    with mode="edge" (for masks, so that a padded row still attends somewhere)."""
    if not count:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, count)
    return jnp.pad(x, widths, mode=mode)


def cut(x: jax.Array, axis: int, n: int) -> jax.Array:
    """x's first `n` entries along `axis` (the rows `pad` added dropped)."""
    return x if x.shape[axis] == n else jax.lax.slice_in_dim(x, 0, n, axis=axis)
