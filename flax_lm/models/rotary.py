"""Rotary position embeddings (RoPE) as transformers' LlamaRotaryEmbedding computes and applies them.
Tensor names carry their shapes: B batch, T length, N heads, H head size."""

import jax.numpy as jnp


def rotary_cos_sin(position_ids_BxT, head_dim: int, theta: float):
    """(cos, sin), each B x T x H in float32: the angle of position p in frequency pair i is
    p * theta^(-2i/H), repeated over both halves of the head as transformers' LlamaRotaryEmbedding."""
    inv_freq_Hh = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BxTxHh = position_ids_BxT.astype(jnp.float32)[..., None] * inv_freq_Hh
    angles_BxTxH = jnp.concatenate([angles_BxTxHh, angles_BxTxHh], axis=-1)
    return jnp.cos(angles_BxTxH), jnp.sin(angles_BxTxH)


def apply_rotary(x_BxTxNxH, cos_BxTxH, sin_BxTxH):
    """x * cos + rotate_half(x) * sin in x's dtype, rotate_half(x) = (-x2, x1) over the halves
    of the head (transformers' convention, not the interleaved pairs of the original RoPE)."""
    dtype = x_BxTxNxH.dtype
    cos_BxTx1xH, sin_BxTx1xH = cos_BxTxH[:, :, None].astype(dtype), sin_BxTxH[:, :, None].astype(dtype)
    x1, x2 = jnp.split(x_BxTxNxH, 2, axis=-1)
    return x_BxTxNxH * cos_BxTx1xH + jnp.concatenate([-x2, x1], axis=-1) * sin_BxTx1xH
