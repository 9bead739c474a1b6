"""Scaled dot-product attention shared by every model family.

Models call `dot_product_attention` with per-head queries, keys and values and say
which implementation to use; swapping the kernel (XLA, cuDNN flash attention on GPU)
is a config change, never a model edit.
"""

import jax
import jax.numpy as jnp

# "xla": jax.nn.dot_product_attention's portable XLA path (fuses well on CPU/GPU/TPU).
# "cudnn": cuDNN flash attention on NVIDIA GPUs (fp16/bf16 only).
# "reference": explicit einsum/softmax; the only one with attention dropout.
IMPLEMENTATIONS = ("xla", "cudnn", "reference")


def dot_product_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxNxH: jax.Array,
    v_BxSxNxH: jax.Array,
    *,
    causal: bool,
    kv_mask_BxS: jax.Array | None = None,
    implementation: str = "xla",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Multi-head attention softmax(q k^T / sqrt(H)) v.

    Shapes: B batch, T query length, S key length, N heads, H head size.
    `kv_mask_BxS` is True where a key may be attended to (False for padding).
    `causal` lets query t see keys s <= t (queries and keys aligned at the start).
    Returns B x T x N x H in the dtype of `q`.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}")
    mask_Bx1xTxS = None if kv_mask_BxS is None else kv_mask_BxS[:, None, None, :]
    if implementation == "reference" or dropout_rate > 0.0:
        return _reference(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, causal, mask_Bx1xTxS, dropout_rate, dropout_rng)
    return jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask_Bx1xTxS, is_causal=causal,
        implementation=None if implementation == "xla" else implementation)


def _reference(q, k, v, causal, mask_Bx1xTxS, dropout_rate, dropout_rng):
    head_dim = q.shape[-1]
    scores_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    scores_BxNxTxS = scores_BxNxTxS / jnp.sqrt(jnp.float32(head_dim))
    allowed = jnp.ones(scores_BxNxTxS.shape[-2:], bool)
    if causal:
        allowed = jnp.tril(allowed)
    if mask_Bx1xTxS is not None:
        allowed = allowed & mask_Bx1xTxS
    scores_BxNxTxS = jnp.where(allowed, scores_BxNxTxS, jnp.finfo(jnp.float32).min)
    probs_BxNxTxS = jax.nn.softmax(scores_BxNxTxS, axis=-1)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxNxTxS.shape)
        probs_BxNxTxS = jnp.where(keep, probs_BxNxTxS / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS.astype(v.dtype), v)
