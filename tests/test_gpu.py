"""Checks that need an NVIDIA GPU (skipped elsewhere; bench/gpu.sh runs them on one): cuDNN
flash attention equal to the reference in bf16 with every mask the models use, and bf16
training on the GPU following fp32 training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from flax_lm.training import train
from flax_lm.ops.attention import dot_product_attention

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")


def _qkv(b=2, t=256, n=4, h=64):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return [jax.random.normal(k, (b, t, n, h), jnp.float32) for k in keys]


@pytest.mark.parametrize("masks", ["causal", "padding", "segments"])
def test_cudnn_attention_equals_the_reference_in_bf16(masks):
    q, k, v = _qkv()
    kwargs = {"causal": masks != "padding"}
    if masks == "padding":
        kv_mask = np.ones((2, 256), bool)
        kv_mask[1, 200:] = False
        kwargs["kv_mask_BxS"] = jnp.asarray(kv_mask)
    if masks == "segments":
        kwargs["segment_ids_BxT"] = jnp.asarray(np.repeat(np.array([[1, 2, 3, 4]]), 64, axis=1).repeat(2, axis=0))

    def loss(implementation, q, k, v):
        out = dot_product_attention(q, k, v, implementation=implementation, **kwargs)
        return jnp.sum(out.astype(jnp.float32) ** 2), out

    grad = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)
    (_, ref), ref_grads = grad("reference", q, k, v)
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    (_, out), grads = jax.jit(grad, static_argnums=0)("cudnn", *bf16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), r, atol=0.1 * float(jnp.abs(r).max()))


def test_bf16_training_on_the_gpu_follows_fp32(tmp_path):
    common = dict(train=dict(steps=30, eval_every=30, checkpoint_every=30), data=dict(packing="segments"))
    fp32 = train.train(tiny_config(**common), tmp_path / "fp32")
    bf16_cfg = tiny_config(model=dict(dtype="bfloat16", attention="cudnn"), **common)
    bf16 = train.train(bf16_cfg, tmp_path / "bf16")
    assert np.isfinite(bf16["loss"]) and abs(bf16["loss"] - fp32["loss"]) < 0.05 * fp32["loss"]
