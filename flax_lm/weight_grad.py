"""Weight gradients x^T . dy, in the form the backend runs fast.

XLA:CPU runs a dot that contracts the leading axis of both operands (x^T . dy) 4x slower in
bf16 than the same dot on a transposed copy of x, and reduces a bias gradient over (batch,
time) with a slow windowed reduction. There, x is copied transposed, with a column of ones
when the bias gradient is wanted too: one dot gives both. Other backends get the plain dot.
"""

import jax
import jax.numpy as jnp


def weight_grad(x_NxI, dy_NxO, with_bias: bool = False):
    """x^T . dy accumulated in float32 (I x O); with `with_bias` also the sum of dy over N (O)."""
    f32 = {"preferred_element_type": jnp.float32}
    if jax.default_backend() != "cpu":
        dw_IxO = jnp.dot(x_NxI.T, dy_NxO, **f32)
        return (dw_IxO, jnp.sum(dy_NxO, axis=0, dtype=jnp.float32)) if with_bias else dw_IxO
    x_NxI = jnp.pad(x_NxI, ((0, 0), (0, int(with_bias))), constant_values=1)
    d_IxO = jnp.dot(_transposed_copy(x_NxI), dy_NxO, **f32)
    return (d_IxO[:-1], d_IxO[-1]) if with_bias else d_IxO


def _transposed_copy(a_NxK):
    """a^T laid out in memory. XLA folds a bare transpose back into the dot that consumes it (and
    the transpose of a dot's result into the dot), but materialises one that is padded and cut
    (along N: padded along K, the copy runs 7x slower)."""
    return jnp.pad(a_NxK.T, ((0, 0), (0, 1)))[:, :-1]
