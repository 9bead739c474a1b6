"""Projections' and the tied head's hand-written backward passes: the gradients autodiff gives,
with products of the compute dtype."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flax_lm.models.layers import contract, tied_logits


def _plain(x, kernel, bias, n_in):
    axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jnp.tensordot(x, kernel, axes=axes)
    return y if bias is None else y + bias


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("in_shape,out_shape", [((6,), (3, 2, 5)), ((2, 4), (7,))])
def test_contract_value_and_gradients_equal_autodiff(in_shape, out_shape, with_bias):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (3, 5, *in_shape))
    kernel = jax.random.normal(keys[1], (*in_shape, *out_shape))
    bias = jax.random.normal(keys[2], out_shape) if with_bias else None
    cotangent = jax.random.normal(keys[3], (3, 5, *out_shape))
    n_in = len(in_shape)

    def vjp(fn):
        y, pullback = jax.vjp(lambda x, k, b: fn(x, k, b, n_in), x, kernel, bias)
        return y, pullback(cotangent)
    (y, grads), (expected_y, expected_grads) = jax.jit(lambda: (vjp(contract), vjp(_plain)))()
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
    assert (grads[2] is None) == (not with_bias)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bf16_projection_bias_gradient_is_summed_in_float32():
    """With bf16 compute and float32 parameters, the bias gradient is never rounded to bf16."""
    from flax_lm.models.layers import Projection
    layer = Projection((48,), ("embed",), ("mlp",), jax.nn.initializers.normal(0.02), bias_axes=("mlp",),
                       dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 64, 16))
    params = layer.init(jax.random.PRNGKey(4), x)
    dy = jax.random.normal(jax.random.PRNGKey(5), (4, 64, 48)).astype(jnp.bfloat16)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, x).astype(jnp.float32) * dy))(params)
    dbias = jax.tree.leaves(grads["params"]["bias"])[0]
    assert dbias.dtype == jnp.float32
    np.testing.assert_allclose(dbias, np.asarray(dy, np.float32).sum((0, 1)), rtol=1e-6, atol=1e-5)


def _dot_input_dtypes(jaxpr) -> set:
    """The input dtypes of every dot_general in `jaxpr` and the jaxprs inside it."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _dot_input_dtypes(sub)
    return found


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_tied_heads_gradients_equal_autodiff_and_multiply_in_its_dtype(dtype):
    """The tied head's products (layers.tied_logits, the MLM head's) are differentiated with inputs
    of the compute dtype: autodiff gave them the float32 cotangent, and XLA:CPU then multiplied
    float32 copies of the bf16 table and cotangent."""
    embed = nn.Embed(97, 32, dtype=dtype)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    table = jax.random.normal(keys[0], (97, 32))
    x = jax.random.normal(keys[1], (3, 5, 32)).astype(dtype)
    cotangent = jax.random.normal(keys[2], (3, 5, 97))

    def loss(table, x):
        logits = embed.apply({"params": {"embedding": table}}, x, method=lambda m, x: tied_logits(x, m))
        return jnp.sum(logits.astype(jnp.float32) * cotangent)

    def plain(table, x):  # the reference: float32 products of the same 16-bit values
        logits = jnp.einsum("btd,vd->btv", x.astype(jnp.float32), table.astype(dtype).astype(jnp.float32))
        return jnp.sum(logits * cotangent)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(table, x)
    want = jax.grad(plain, argnums=(0, 1))(table, x)
    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    for got, expected in zip(grads, want):
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                                   rtol=tolerance, atol=tolerance * float(jnp.abs(expected).max()))
    name = jnp.dtype(dtype).name
    assert _dot_input_dtypes(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(table, x).jaxpr) == {(name, name)}
