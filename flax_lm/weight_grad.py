"""Weight gradients x^T . dy, in the form the target platform runs fast.

XLA:CPU runs a dot that contracts the leading axes of both operands (x^T . dy) 4x slower in
bf16 than the same dot on a transposed copy of x, and reduces a bias gradient over (batch,
time) with a slow windowed reduction. There, x is copied transposed, and the bias gradient
comes from a dot too: in bf16, x gets a column of ones and one dot gives both; in float32, a
row of ones times dy (gpt2_tiny's float32 train step 2-3% faster than with the column, whose
padded copies of x the forward pass wrote; in bf16 the row was 5-7% slower). Other platforms
get the plain contraction, on the arrays' own shapes (a TPU would pay for merging their axes).
"""

import math

import jax.numpy as jnp

from flax_lm import sharding


def weight_grad(x, dy, n_batch: int = 1, with_bias: bool = False):
    """x (*batch, *in) ^T . dy (*batch, *out) over the `n_batch` leading axes, accumulated in float32
    (*in, *out); with `with_bias` also the sum of dy over them (*out)."""
    f32 = {"preferred_element_type": jnp.float32}
    batch_axes = tuple(range(n_batch))
    in_shape, out_shape = x.shape[n_batch:], dy.shape[n_batch:]
    if sharding.target_platform() != "cpu":
        dw = jnp.tensordot(x, dy, axes=(batch_axes, batch_axes), **f32)
        # summed in dy's dtype, as autodiff sums it: asking for a float32 sum made a TPU program keep
        # a float32 copy of dy (gpt2_small, FSDP + remat: 5.20 against 4.85 GiB of temporaries a chip)
        return (dw, jnp.sum(dy, axis=batch_axes).astype(jnp.float32)) if with_bias else dw
    n = math.prod(x.shape[:n_batch])
    x_NxI, dy_NxO = x.reshape(n, -1), dy.reshape(n, -1)
    ones_column = with_bias and x.dtype != jnp.float32
    if ones_column:
        x_NxI = jnp.pad(x_NxI, ((0, 0), (0, 1)), constant_values=1)
    d_IxO = jnp.dot(_transposed_copy(x_NxI), dy_NxO, **f32)
    dw = d_IxO[:math.prod(in_shape)].reshape(in_shape + out_shape)
    if not with_bias:
        return dw
    db = d_IxO[-1] if ones_column else jnp.dot(jnp.ones((n,), dy.dtype), dy_NxO, **f32)
    return dw, db.reshape(out_shape)


def _transposed_copy(a_NxK):
    """a^T laid out in memory. XLA folds a bare transpose back into the dot that consumes it (and
    the transpose of a dot's result into the dot), but materialises one that is padded and cut
    (along N: padded along K, the copy runs 7x slower)."""
    return jnp.pad(a_NxK.T, ((0, 0), (0, 1)))[:, :-1]
