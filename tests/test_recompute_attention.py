"""The recompute attention (scores recomputed, never stored) gives the reference's values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm.ops.attention import dot_product_attention


def _inputs(n_heads, n_kv, dtype=jnp.float32, b=2, t=16, h=8):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(kq, (b, t, n_heads, h), dtype), jax.random.normal(kk, (b, t, n_kv, h), dtype),
            jax.random.normal(kv, (b, t, n_kv, h), dtype))


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_recompute_matches_reference_values_and_gradients(n_kv, causal):
    q, k, v = _inputs(4, n_kv)
    segments = jnp.array([[0] * 10 + [1] * 6, [0] * 16])
    mask = jnp.arange(16)[None, :] < jnp.array([[16], [12]])

    def loss(impl, q, k, v):
        out = dot_product_attention(q, k, v, causal=causal, kv_mask_BxS=mask,
                                    segment_ids_BxT=segments if causal else None, implementation=impl)
        return jnp.sum(out * jnp.cos(out))

    want, want_grads = jax.value_and_grad(loss, argnums=(1, 2, 3))("reference", q, k, v)
    got, got_grads = jax.value_and_grad(loss, argnums=(1, 2, 3))("recompute", q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=2e-5)


def test_recompute_bias_gradient_matches_reference():
    q, k, v = _inputs(4, 4)
    bias = jax.random.normal(jax.random.key(1), (1, 4, 16, 16))

    def loss(impl, bias):
        return jnp.sum(dot_product_attention(q, k, v, causal=True, bias_BxNxTxS=bias, implementation=impl) ** 2)

    np.testing.assert_allclose(jax.grad(loss, argnums=1)("recompute", bias),
                               jax.grad(loss, argnums=1)("reference", bias), atol=2e-5)


def test_recompute_runs_in_bf16_close_to_float32():
    q, k, v = _inputs(4, 2)
    low = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), causal=True, implementation="recompute")
    assert low.dtype == jnp.bfloat16
    full = dot_product_attention(q, k, v, causal=True, implementation="reference")
    np.testing.assert_allclose(low.astype(jnp.float32), full, atol=3e-2)
