"""The shared attention: implementations agree, masks mask."""

import jax
import numpy as np
import pytest

from flax_lm.attention import dot_product_attention


def _qkv(seed=0, b=2, t=7, n=3, h=8):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (b, t, n, h)) for k in keys]


@pytest.mark.parametrize("causal", [False, True])
def test_xla_and_reference_agree_with_padding(causal):
    q, k, v = _qkv()
    mask = np.ones((2, 7), bool)
    mask[1, 5:] = False
    out = [dot_product_attention(q, k, v, causal=causal, kv_mask_BxS=mask, implementation=impl)
           for impl in ("xla", "reference")]
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_masked_keys_are_ignored():
    q, k, v = _qkv()
    mask = np.ones((2, 7), bool)
    mask[:, 4:] = False
    out = dot_product_attention(q, k, v, causal=False, kv_mask_BxS=mask)
    garbage = v.at[:, 4:].set(1e3)
    np.testing.assert_allclose(dot_product_attention(q, k, garbage, causal=False, kv_mask_BxS=mask), out, atol=1e-5)


def test_attention_dropout_is_seeded_and_scales():
    q, k, v = _qkv()
    rng = jax.random.PRNGKey(3)
    a = dot_product_attention(q, k, v, causal=True, dropout_rate=0.5, dropout_rng=rng, implementation="reference")
    b = dot_product_attention(q, k, v, causal=True, dropout_rate=0.5, dropout_rng=rng, implementation="reference")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, dot_product_attention(q, k, v, causal=True))
