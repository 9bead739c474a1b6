"""The shared attention: implementations agree, masks mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm.ops.attention import dot_product_attention
from flax_lm.ops.explicit_attention import heads_first


def _qkv(seed=0, b=2, t=7, n=3, h=8):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (b, t, n, h)) for k in keys]


def _assert_same_values_and_gradients(loss, argnums, reference_args, args, atol):
    """`loss` returns (scalar, output): the outputs and the gradients of both calls agree."""
    (_, ref), ref_grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(*reference_args)
    (_, out), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(*args)
    np.testing.assert_allclose(out, ref, atol=atol)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=atol)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "explicit"])
def test_implementations_agree_with_reference_values_and_gradients(causal, implementation):
    q, k, v = _qkv()
    mask = np.ones((2, 7), bool)
    mask[1, 5:] = False

    def loss(impl, q, k, v):
        out = dot_product_attention(q, k, v, causal=causal, kv_mask_BxS=mask, implementation=impl)
        return jnp.sum(out * jnp.cos(out)), out

    _assert_same_values_and_gradients(loss, (1, 2, 3), ("reference", q, k, v), (implementation, q, k, v), 1e-5)


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


@pytest.mark.parametrize("bias_shape", [(1, 3, 7, 7), (2, 3, 7, 7), (2, 1, 7, 7)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "explicit"])
def test_bias_and_scale_agree_with_reference_values_and_gradients(bias_shape, causal, implementation):
    """T5's relative-position bias is trained through the attention: its gradient (summed over
    the broadcast dimensions) must match autodiff of the reference."""
    q, k, v = _qkv(seed=1)
    bias = jax.random.normal(jax.random.PRNGKey(7), bias_shape)
    mask = np.ones((2, 7), bool)
    mask[1, 5:] = False

    def loss(impl, q, k, v, bias):
        out = dot_product_attention(q, k, v, causal=causal, kv_mask_BxS=mask, bias_BxNxTxS=bias, scale=1.0,
                                    implementation=impl)
        return jnp.sum(out * jnp.cos(out)), out

    grad = jax.value_and_grad(loss, argnums=(1, 2, 3, 4), has_aux=True)
    (_, ref), ref_grads = grad("reference", q, k, v, bias)
    (_, out), grads = grad(implementation, q, k, v, bias)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert grads[3].shape == bias_shape and np.abs(ref_grads[3]).max() > 1e-3
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_bias_and_scale_are_what_they_say():
    """scale=None is 1/sqrt(H); a bias that is a function of the key only is a key preference:
    a large bias on one key makes every query return (almost) that key's value."""
    q, k, v = _qkv(seed=2)
    for impl in ("reference", "explicit", "xla"):
        default = dot_product_attention(q, k, v, causal=False, implementation=impl)
        explicit_scale = dot_product_attention(q, k, v, causal=False, scale=8 ** -0.5, implementation=impl)
        np.testing.assert_allclose(explicit_scale, default, atol=1e-6)
        zero_bias = dot_product_attention(q, k, v, causal=False, bias_BxNxTxS=jnp.zeros((1, 1, 7, 7)),
                                          implementation=impl)
        np.testing.assert_allclose(zero_bias, default, atol=1e-6)
        bias = jnp.zeros((1, 3, 7, 7)).at[:, :, :, 4].set(100.0)
        out = dot_product_attention(q, k, v, causal=False, bias_BxNxTxS=bias, scale=1.0, implementation=impl)
        np.testing.assert_allclose(out, jnp.broadcast_to(v[:, 4:5], out.shape), atol=1e-4)


def test_bias_with_a_cache_offset_matches_reference():
    q, _, _ = _qkv(seed=3, t=2)
    _, k, v = _qkv(seed=4, t=7)
    bias = jax.random.normal(jax.random.PRNGKey(5), (1, 3, 2, 7))
    outs = [dot_product_attention(q, k, v, causal=True, query_offset=jnp.int32(3), bias_BxNxTxS=bias, scale=1.0,
                                  implementation=impl) for impl in ("reference", "explicit", "xla")]
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-5)


@pytest.mark.parametrize("implementation", ["explicit", "xla", "reference"])
def test_keys_and_values_in_cache_layout_give_the_same_values_and_gradients(implementation):
    q, _, _ = _qkv(seed=6, t=2)
    _, k, v = _qkv(seed=7, t=7)
    mask = np.ones((2, 7), bool)
    mask[0, :2] = False

    def loss(k, v, cache_layout):
        if cache_layout:  # (B*N) x S x H, as decoding caches keep them
            k, v = heads_first(k), heads_first(v)
        out = dot_product_attention(q, k, v, causal=True, kv_mask_BxS=mask, query_offset=jnp.int32(4),
                                    implementation=implementation, kv_cache_layout=cache_layout)
        return jnp.sum(out * jnp.cos(out)), out

    _assert_same_values_and_gradients(loss, (0, 1), (k, v, False), (k, v, True), 1e-6)


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("implementation", ["explicit", "xla", "reference", "explicit in cache layout"])
def test_grouped_keys_and_values_equal_repeated_ones_in_values_and_gradients(implementation, kv_heads):
    q, _, _ = _qkv(seed=8, n=4)
    _, k, v = _qkv(seed=9, n=kv_heads)
    mask = np.ones((2, 7), bool)
    mask[1, 4:] = False
    cache_layout = implementation.endswith("cache layout")

    def loss(k, v, grouped):
        if not grouped:  # transformers' repeat_kv: query head n reads key/value head n // (4 / kv_heads)
            k, v = (jnp.repeat(x, 4 // kv_heads, axis=2) for x in (k, v))
        if cache_layout:
            k, v = heads_first(k), heads_first(v)
        out = dot_product_attention(q, k, v, causal=True, kv_mask_BxS=mask, implementation=implementation.split()[0],
                                    kv_cache_layout=cache_layout)
        return jnp.sum(out * jnp.cos(out)), out

    _assert_same_values_and_gradients(loss, (0, 1), (k, v, False), (k, v, True), 1e-5)


@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-5), (jnp.bfloat16, 0.05)])
def test_causal_self_attention_with_packed_documents_gives_the_reference_values_and_gradients(segments, dtype,
                                                                                             atol):
    q, k, v = _qkv(seed=3, b=2, t=128, n=2, h=16)
    ids = jnp.asarray([[1] * 50 + [2] * 78, [1] * 128], jnp.int32) if segments else None

    def loss(impl, q, k, v):
        out = dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal=True,
                                    segment_ids_BxT=ids, implementation=impl).astype(jnp.float32)
        return jnp.sum(out * jnp.cos(out)), out

    _assert_same_values_and_gradients(loss, (1, 2, 3), ("reference", q, k, v), ("explicit", q, k, v), atol)


def _traced_on_a_tpu_topology(fn, *args):
    """The jaxpr of fn(*args) traced for a v5e-4 topology (what `auto` chooses there), as text."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("TPU topologies need libtpu")
    from flax_lm.backends import tpu
    mesh = jax.sharding.Mesh(np.asarray(tpu.topology_devices("v5e-4")), ("data",))
    with jax.set_mesh(mesh):
        return str(jax.make_jaxpr(fn)(*args))


def test_on_tpu_auto_is_splash_where_it_applies_and_recompute_with_one_line_where_not(caplog):
    import logging
    from flax_lm.ops import attention
    attention._said.clear()
    q = jnp.zeros((4, 128, 4, 64), jnp.bfloat16)
    kv = jnp.zeros((4, 128, 2, 64), jnp.bfloat16)  # grouped-query: 2 key/value heads for 4 query heads
    segments = jnp.zeros((4, 128), jnp.int32)
    with caplog.at_level(logging.WARNING, logger="flax_lm"):
        packed = _traced_on_a_tpu_topology(
            lambda q, k: dot_product_attention(q, k, k, causal=True, segment_ids_BxT=segments), q, kv)
        assert "pallas_call" in packed and not caplog.records
        bias = jnp.zeros((1, 4, 128, 128))
        biased = _traced_on_a_tpu_topology(
            lambda q, k: dot_product_attention(q, k, k, causal=False, bias_BxNxTxS=bias), q, q)
        off_grid = _traced_on_a_tpu_topology(lambda q, k: dot_product_attention(q, k, k, causal=True), q[:, :96],
                                             kv[:, :96])
    for jaxpr in (biased, off_grid):  # recompute's hand-written backward pass, not the kernel
        assert "pallas_call" not in jaxpr and "_recompute" in jaxpr
    assert [r.getMessage() for r in caplog.records] == [
        "attention: splash does not apply to an attention bias; using recompute",
        "attention: splash does not apply to 96 queries x 96 keys (not multiples of 128); using recompute"]


def test_the_platforms_loss_chunk_is_unchunked_on_tpu_and_16_elsewhere():
    from flax_lm import backends
    from flax_lm.ops.losses import linear_cross_entropy
    h, w = jnp.zeros((2, 64, 8)), jnp.zeros((32, 8))
    y, weights = jnp.zeros((2, 64), jnp.int32), jnp.ones((2, 64))
    loss = jax.value_and_grad(lambda h, w: linear_cross_entropy(h, w, y, weights, -1), argnums=(0, 1))
    assert backends.current().loss_chunk_len() == 16
    assert "scan" in str(jax.make_jaxpr(loss)(h, w))  # 4 chunks of 16 positions
    assert "scan" not in _traced_on_a_tpu_topology(loss, h, w)
