"""The shared attention: implementations agree, masks mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm.attention import dot_product_attention


def _qkv(seed=0, b=2, t=7, n=3, h=8):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (b, t, n, h)) for k in keys]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "explicit"])
def test_implementations_agree_with_reference_values_and_gradients(causal, implementation):
    q, k, v = _qkv()
    mask = np.ones((2, 7), bool)
    mask[1, 5:] = False

    def loss(impl, q, k, v):
        out = dot_product_attention(q, k, v, causal=causal, kv_mask_BxS=mask, implementation=impl)
        return jnp.sum(out * jnp.cos(out)), out

    (_, ref), ref_grads = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)("reference", q, k, v)
    (_, out), grads = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(implementation, q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_explicit_attention_runs_in_bf16():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
    out = dot_product_attention(q, k, v, causal=True, implementation="explicit")
    ref = dot_product_attention(*_qkv(), causal=True, implementation="reference")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.05)


@pytest.mark.parametrize("implementation", ["xla", "explicit", "reference"])
def test_masked_keys_are_ignored(implementation):
    q, k, v = _qkv()
    mask = np.ones((2, 7), bool)
    mask[:, 4:] = False
    out = dot_product_attention(q, k, v, causal=False, kv_mask_BxS=mask, implementation=implementation)
    garbage = v.at[:, 4:].set(1e3)
    np.testing.assert_allclose(
        dot_product_attention(q, k, garbage, causal=False, kv_mask_BxS=mask, implementation=implementation),
        out, atol=1e-5)


def test_attention_dropout_is_seeded_and_scales():
    q, k, v = _qkv()
    rng = jax.random.PRNGKey(3)
    a = dot_product_attention(q, k, v, causal=True, dropout_rate=0.5, dropout_rng=rng, implementation="reference")
    b = dot_product_attention(q, k, v, causal=True, dropout_rate=0.5, dropout_rng=rng, implementation="reference")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, dot_product_attention(q, k, v, causal=True))
