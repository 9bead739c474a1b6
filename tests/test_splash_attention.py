"""model.attention="splash": the Pallas TPU kernel, run in interpret mode on CPU, equals the
reference forward and backward; what it cannot do falls back; under a mesh it runs per device
in a shard_map; and the real train step compiles for a TPU topology with the Mosaic kernel in it."""

import importlib.util
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flax_lm.ops import attention, splash_attention
from flax_lm.config import load as config
from flax_lm.parallel import mesh as mesh_lib
from flax_lm.ops.attention import dot_product_attention


def _qkv(b, t, n, h, seed=0):
    return tuple(jax.random.normal(key, (b, t, n, h)) for key in jax.random.split(jax.random.PRNGKey(seed), 3))


def _lengths_mask(t, valid_from, valid_to):
    """B x T key mask: keys valid_from[b] <= s < valid_to[b] may be attended to."""
    s = np.arange(t)[None, :]
    return jnp.asarray((s >= np.asarray(valid_from)[:, None]) & (s < np.asarray(valid_to)[:, None]))


def _documents(t, *starts_per_row):
    """B x T packed segment ids (1, 2, ...): a new document at each of a row's starts."""
    return jnp.asarray(np.stack([np.cumsum(np.isin(np.arange(t), (0, *starts))) for starts in starts_per_row]))


def _out_and_grads(implementation, q, k, v, **kwargs):
    """The attention's output and the gradients (q, k, v) of a scalar loss of it."""
    w = jax.random.normal(jax.random.PRNGKey(7), q.shape)

    def loss(q, k, v):
        out = dot_product_attention(q, k, v, implementation=implementation, **kwargs)
        return jnp.sum(out * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _assert_matches_reference(q, k, v, **kwargs):
    out, grads = _out_and_grads("splash", q, k, v, **kwargs)
    want_out, want_grads = _out_and_grads("reference", q, k, v, **kwargs)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=0)
    for name, got, want in zip("qkv", grads, want_grads):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")


T = 256
CASES = {
    "causal": dict(causal=True),
    "padded keys": dict(causal=False, kv_mask_BxS=_lengths_mask(T, [0, 0], [200, T])),
    "packed documents": dict(causal=True, segment_ids_BxT=_documents(T, (100,), (30, 131, 200))),
    "packed and padded": dict(causal=True, segment_ids_BxT=_documents(T, (100,), (30,)),
                              kv_mask_BxS=_lengths_mask(T, [0, 0], [180, T])),
    "scale 1.0": dict(causal=False, scale=1.0),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_equal_the_reference(case):
    h = 32 if case == "scale 1.0" else 64
    _assert_matches_reference(*_qkv(2, T, 2, h), **CASES[case])


@pytest.mark.parametrize("causal", [False, True])
def test_fully_padded_query_rows_average_all_values_as_the_reference_does(causal):
    # 384 keys: three 128-key blocks, so the causal kernel visits fewer keys than it is given.
    # Row 0 is left-padded (its first 200 queries see no key); row 1 is all padding.
    t = 384
    _assert_matches_reference(*_qkv(2, t, 2, 32, seed=1), causal=causal, kv_mask_BxS=_lengths_mask(t, [200, t], [t, t]))


def test_cross_attention_to_more_keys_than_queries():
    # T5's decoder attending to its encoder: 128 queries, 256 keys, one example all padding.
    q = _qkv(2, 128, 2, 32, seed=4)[0]
    k, v = _qkv(2, 256, 2, 32, seed=5)[1:]
    _assert_matches_reference(q, k, v, causal=False, kv_mask_BxS=_lengths_mask(256, [0, 256], [150, 256]), scale=1.0)


def test_what_the_kernel_cannot_do_falls_back_to_the_same_function():
    q, k, v = _qkv(2, 128, 2, 32)
    bias = jax.random.normal(jax.random.PRNGKey(3), (1, 2, 128, 128))  # T5's relative positions
    assert splash_attention.unsupported(128, 128, False, None, 0, bias) == "an attention bias"
    _assert_matches_reference(q, k, v, causal=False, bias_BxNxTxS=bias, scale=1.0)
    assert "not multiples of 128" in splash_attention.unsupported(96, 96, True, None, 0, None)
    _assert_matches_reference(*(x[:, :96] for x in (q, k, v)), causal=True)


def test_under_a_mesh_each_device_runs_the_kernel_on_its_batch_rows_and_heads():
    from conftest import tiny_config
    mesh = mesh_lib.make_mesh(tiny_config(parallel=dict(data=4, fsdp=1, tensor=2)))
    q, k, v = _qkv(4, 128, 2, 32, seed=2)
    kwargs = dict(causal=True, segment_ids_BxT=_documents(128, (50,), (), (10, 90), (127,)),
                  kv_mask_BxS=_lengths_mask(128, [0, 0, 0, 0], [128, 100, 128, 64]))
    want_out, want_grads = _out_and_grads("reference", q, k, v, **kwargs)
    with jax.set_mesh(mesh):
        q, k, v = (jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))) for x in (q, k, v))
        splash = lambda q, k, v: dot_product_attention(q, k, v, implementation="splash", **kwargs)  # noqa: E731
        assert "shard_map" in str(jax.make_jaxpr(splash)(q, k, v))
        out, grads = _out_and_grads("splash", q, k, v, **kwargs)
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=0)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="TPU topologies need libtpu")
def test_on_tpu_auto_attention_is_the_splash_kernel_and_the_train_step_compiles_with_it(caplog):
    """The default (`model.attention=auto`) is splash on a TPU topology, with packed documents'
    segment ids, and the kernel takes the call (no fallback is reported)."""
    from flax_lm.training import tpu_compile
    devices = tpu_compile.topology_devices("v5e:2x2")
    with jax.set_mesh(jax.sharding.Mesh(np.asarray(devices).reshape(4), ("data",))):
        assert attention.resolve("auto", dtype=jnp.bfloat16, head_dim=64) == "splash"
    cfg = config.load("gpt2_tiny", ["--config.parallel.data=2", "--config.parallel.tensor=2",
                                    "--config.data.packing=segments"])  # T = 128
    assert cfg.model.attention == "auto"
    with caplog.at_level(logging.WARNING, logger="flax_lm"):
        report = tpu_compile.compile_train_step(cfg, devices)
    assert report["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2} and report["fits"] is True
    assert not [r for r in caplog.records if "attention:" in r.getMessage()]
