"""Scaled dot-product attention shared by every model family.

Models call `dot_product_attention` with per-head queries, keys and values and say
which implementation to use; swapping the kernel is a config change, never a model edit.
"""

import logging

import jax
import jax.numpy as jnp

from flax_lm import backends
from flax_lm.ops import explicit_attention, recompute_attention, splash_attention

# "auto": the backend's choice (`backends`): splash on TPU (recompute where splash does not
#   apply), cuDNN on GPU where it applies, explicit on CPU, xla elsewhere.
# "xla": jax.nn.dot_product_attention's portable XLA path.
# "cudnn": cuDNN flash attention on NVIDIA GPUs (fp16/bf16 only).
# "explicit": softmax attention with a hand-written backward pass over (B*N, T, H)
#   batched matmuls; XLA:CPU runs it 2.3x faster than its own derivative.
# "recompute": explicit's products and layout, the T x S scores recomputed from q and k where
#   they are read instead of stored (less memory traffic, more FLOPs; see recompute_attention).
# "reference": plain einsum/softmax; the only one with attention dropout.
# "splash": Pallas splash attention, the TPU flash kernel (interpreted off TPU; see splash_attention).
IMPLEMENTATIONS = ("auto", "xla", "cudnn", "explicit", "recompute", "reference", "splash")
_said = set()  # the fallbacks already reported, once a process each


def resolve(implementation: str, *, dtype=jnp.float32, head_dim: int = 64, bias: bool = False,
            cache: bool = False) -> str:
    """The concrete implementation "auto" stands for in a call of queries in `dtype` and heads of
    `head_dim`, with a bias or not, reading a decoding cache or not, on the backend the program is
    traced for (a TPU topology's when compiling ahead of time on another machine)."""
    if implementation != "auto":
        return implementation
    return backends.current().attention(dtype=dtype, head_dim=head_dim, bias=bias, cache=cache)


def _fall_back(requested: str, reason: str, fallback: str | None = None) -> str:
    """`fallback`, by default the backend's (`Backend.attention_fallback`: XLA's, recompute on TPU),
    in place of `requested`, said once in one line."""
    fallback = fallback or backends.current().attention_fallback
    if (requested, reason, fallback) not in _said:
        _said.add((requested, reason, fallback))
        logging.getLogger("flax_lm").warning("attention: %s does not apply to %s; using %s", requested, reason,
                                             fallback)
    return fallback


def dot_product_attention(
    q_BxTxNxH: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    kv_mask_BxS: jax.Array | None = None,
    segment_ids_BxT: jax.Array | None = None,
    query_offset: jax.Array | int = 0,
    implementation: str = "auto",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    bias_BxNxTxS: jax.Array | None = None,
    scale: float | None = None,
    kv_cache_layout: bool = False,
) -> jax.Array:
    """Multi-head attention softmax(scale * q k^T + bias) v, scale 1/sqrt(H) by default.

    Shapes: B batch, T query length, S key length, N heads, H head size; `k` and `v` are
    B x S x K x H, or (B*K) x S x H with `kv_cache_layout` (see `layers.write_cache`): the
    explicit implementation reads a decoding cache in that layout without a copy. K key/value
    heads may be fewer than N (grouped-query attention): query head n reads key/value head
    n // (N / K), as `transformers`' repeat_kv has it.
    `kv_mask_BxS` is True where a key may be attended to (False for padding).
    `segment_ids_BxT` (self-attention, T == S) numbers the documents packed into a row: a
    query attends only to keys of its own document.
    `causal` lets query t see keys s <= t + `query_offset`: queries are the keys from position
    `query_offset` on, as when decoding with a key/value cache (a traced scalar is fine).
    `bias_BxNxTxS` is added to the scaled scores before masking (T5's relative positions); its
    batch and head dimensions may be 1 (broadcast), and it is differentiable in every
    implementation. `scale` None means 1/sqrt(H); T5 uses 1.0.
    Returns B x T x N x H in the dtype of `q`.
    """
    requested = implementation
    implementation = resolve(implementation, dtype=q_BxTxNxH.dtype, head_dim=q_BxTxNxH.shape[-1],
                             bias=bias_BxNxTxS is not None, cache=kv_cache_layout or not isinstance(query_offset, int))
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}")
    b, t, n, _ = q_BxTxNxH.shape
    if implementation == "splash":  # k is B x S x K x H or (B*K) x S x H: S is its second axis either way
        unsupported = splash_attention.unsupported(t, k.shape[1], causal, segment_ids_BxT, query_offset,
                                                   bias_BxNxTxS)
        if unsupported is not None:
            # The same function on the backend's fallback path, not an error: splash then still serves
            # T5 (its bias), KV-cache decoding and lengths off the 128 grid, where the kernel cannot.
            implementation = _fall_back("splash", unsupported)
    explicit = implementation in ("explicit", "recompute") and dropout_rate == 0.0
    if kv_cache_layout and not explicit:  # the others take B x S x K x H
        k, v = (explicit_attention.heads_last(x, b) for x in (k, v))
        kv_cache_layout = False
    s = k.shape[1]
    groups = n * b // k.shape[0] if kv_cache_layout else n // k.shape[2]
    if groups > 1 and bias_BxNxTxS is not None:
        raise ValueError("grouped keys and values with a bias are not supported")
    if groups > 1 and not kv_cache_layout and implementation in ("explicit", "recompute", "reference", "splash"):
        # XLA's own takes them grouped; the others repeat them, except the explicit one reading a
        # cache (a copy of it every step). Repeating measured 4% faster than grouping in
        # llama_tiny's CPU training step.
        k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
        groups = 1
    if explicit:
        allowed = _allowed_Bx1xTxS(t, s, causal, kv_mask_BxS, segment_ids_BxT, query_offset)
        kernel = explicit_attention if implementation == "explicit" else recompute_attention
        return kernel.attention(q_BxTxNxH, k, v, allowed, bias_BxNxTxS, _scale(q_BxTxNxH, scale), kv_cache_layout,
                                groups)
    if implementation == "reference" or dropout_rate > 0.0:
        allowed = _allowed_Bx1xTxS(t, s, causal, kv_mask_BxS, segment_ids_BxT, query_offset)
        return _reference(q_BxTxNxH, k, v, allowed, dropout_rate, dropout_rng, bias_BxNxTxS, scale)
    if implementation == "splash":
        return splash_attention.splash_attention(
            q_BxTxNxH, k, v, causal=causal, kv_mask_BxS=kv_mask_BxS,
            segment_ids_BxT=segment_ids_BxT, scale=_scale(q_BxTxNxH, scale))
    if causal and not (isinstance(query_offset, int) and query_offset == 0):
        # The fused kernels' is_causal aligns queries and keys at the start; a cache needs the full mask.
        mask, causal = _allowed_Bx1xTxS(t, s, causal, kv_mask_BxS, segment_ids_BxT, query_offset), False
    elif segment_ids_BxT is None:
        mask = None if kv_mask_BxS is None else kv_mask_BxS[:, None, None, :]
    else:  # is_causal stays with the kernel (cuDNN skips the blocks above the diagonal)
        mask = _allowed_Bx1xTxS(t, s, False, kv_mask_BxS, segment_ids_BxT)
    if bias_BxNxTxS is not None and implementation == "cudnn":
        bias_BxNxTxS = bias_BxNxTxS.astype(q_BxTxNxH.dtype)  # cuDNN takes the bias in the inputs' dtype
    def fused(implementation):
        return jax.nn.dot_product_attention(q_BxTxNxH, k, v, bias=bias_BxNxTxS, mask=mask, scale=scale,
                                            is_causal=causal, implementation=None if implementation == "xla" else implementation)
    if implementation == "cudnn" and requested == "auto":
        try:  # the backend's choice where cuDNN takes the call; jax checks the rest as it traces
            return fused("cudnn")
        except (ValueError, NotImplementedError, RuntimeError) as e:
            return fused(_fall_back("cudnn", str(e).splitlines()[0] if str(e) else type(e).__name__, "xla"))
    return fused(implementation)


def _scale(q_BxTxNxH, scale: float | None) -> float:
    """The score scale for the kernels that take a number: `scale`, else 1/sqrt(H)."""
    return q_BxTxNxH.shape[-1] ** -0.5 if scale is None else float(scale)


def _allowed_Bx1xTxS(t: int, s: int, causal: bool, kv_mask_BxS, segment_ids_BxT=None,
                     query_offset=0) -> jax.Array:
    """True where query t may attend to key s (broadcast over heads; the batch dimension is 1
    when neither a key mask nor segment ids vary it)."""
    if causal:
        allowed = jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + query_offset
    else:
        allowed = jnp.ones((t, s), bool)
    allowed = allowed[None, None]
    if kv_mask_BxS is not None:
        allowed = allowed & kv_mask_BxS[:, None, None, :].astype(bool)
    if segment_ids_BxT is not None:
        allowed = allowed & (segment_ids_BxT[:, None, :, None] == segment_ids_BxT[:, None, None, :])
    return allowed


def _reference(q, k, v, allowed_Bx1xTxS, dropout_rate, dropout_rng, bias_BxNxTxS=None, scale=None):
    scores_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    if scale is None:
        scores_BxNxTxS = scores_BxNxTxS / jnp.sqrt(jnp.float32(q.shape[-1]))
    else:
        scores_BxNxTxS = scores_BxNxTxS * jnp.float32(scale)
    if bias_BxNxTxS is not None:
        scores_BxNxTxS = scores_BxNxTxS + bias_BxNxTxS.astype(jnp.float32)
    scores_BxNxTxS = jnp.where(allowed_Bx1xTxS, scores_BxNxTxS, explicit_attention.MASKED)
    probs_BxNxTxS = jax.nn.softmax(scores_BxNxTxS, axis=-1)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxNxTxS.shape)
        probs_BxNxTxS = jnp.where(keep, probs_BxNxTxS / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS.astype(v.dtype), v)
