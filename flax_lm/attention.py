"""Scaled dot-product attention shared by every model family.

Models call `dot_product_attention` with per-head queries, keys and values and say
which implementation to use; swapping the kernel is a config change, never a model edit.
"""

import functools

import jax
import jax.numpy as jnp

from flax_lm import bf16_kernels, few_rows, sharding, splash_attention

# "auto": "explicit" on CPU, "xla" elsewhere.
# "xla": jax.nn.dot_product_attention's portable XLA path.
# "cudnn": cuDNN flash attention on NVIDIA GPUs (fp16/bf16 only).
# "explicit": softmax attention with a hand-written backward pass over (B*N, T, H)
#   batched matmuls; XLA:CPU runs it 2.3x faster than its own derivative.
# "reference": plain einsum/softmax; the only one with attention dropout.
# "splash": Pallas splash attention, the TPU flash kernel (interpreted off TPU; see splash_attention).
IMPLEMENTATIONS = ("auto", "xla", "cudnn", "explicit", "reference", "splash")
_MASKED = -1e30  # finite, so a fully masked row gives a uniform row, never NaN


def resolve(implementation: str) -> str:
    """The concrete implementation "auto" stands for on the platform the program is traced for
    (a TPU topology's when compiling ahead of time on a CPU machine)."""
    if implementation != "auto":
        return implementation
    return "explicit" if sharding.target_platform() == "cpu" else "xla"


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
    implementation = resolve(implementation)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}")
    b, t, n, _ = q_BxTxNxH.shape
    explicit = implementation == "explicit" and dropout_rate == 0.0
    if kv_cache_layout and not explicit:  # the others take B x S x K x H
        k, v = (_heads_last(x, b) for x in (k, v))
        kv_cache_layout = False
    s = k.shape[1]
    groups = n * b // k.shape[0] if kv_cache_layout else n // k.shape[2]
    if groups > 1 and bias_BxNxTxS is not None:
        raise ValueError("grouped keys and values with a bias are not supported")
    if groups > 1 and not kv_cache_layout and implementation in ("explicit", "reference", "splash"):
        # XLA's own takes them grouped; the others repeat them, except the explicit one reading a
        # cache (a copy of it every step). Repeating measured 4% faster than grouping in
        # llama_tiny's CPU training step.
        k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
        groups = 1
    if explicit:
        # one-token decoding in 16-bit: a native kernel, or more query rows, the padded ones
        # attending as the last does
        native = kv_cache_layout and few_rows.attends_natively(q_BxTxNxH.dtype, t)
        count = 0 if native else few_rows.extra(t, q_BxTxNxH.dtype, groups)
        allowed = few_rows.pad(_allowed_Bx1xTxS(t, s, causal, kv_mask_BxS, segment_ids_BxT, query_offset), 2,
                               count, "edge")
        if groups > 1:  # the G query heads of a key/value head are G*T query rows of one product
            allowed = jnp.tile(allowed, (1, 1, groups, 1))
        bias = None if bias_BxNxTxS is None else few_rows.pad(bias_BxNxTxS, 2, count, "edge")
        blocks = _query_blocks(t, s, causal, kv_mask_BxS, bias, count, kv_cache_layout, query_offset)
        o_BxTxNxH = _explicit(few_rows.pad(q_BxTxNxH, 1, count), k, v, allowed, bias, _scale(q_BxTxNxH, scale),
                              kv_cache_layout, groups, native, blocks)
        return few_rows.cut(o_BxTxNxH, 1, t)
    if implementation == "reference" or dropout_rate > 0.0:
        allowed = _allowed_Bx1xTxS(t, s, causal, kv_mask_BxS, segment_ids_BxT, query_offset)
        return _reference(q_BxTxNxH, k, v, allowed, dropout_rate, dropout_rng, bias_BxNxTxS, scale)
    if implementation == "splash":
        if splash_attention.supports(t, s, causal, segment_ids_BxT, query_offset, bias_BxNxTxS):
            return splash_attention.splash_attention(
                q_BxTxNxH, k, v, causal=causal, kv_mask_BxS=kv_mask_BxS,
                segment_ids_BxT=segment_ids_BxT, scale=_scale(q_BxTxNxH, scale))
        # The same function on XLA's path, not an error: model.attention=splash then still serves
        # T5 (its bias), KV-cache decoding and lengths off the 128 grid, where the kernel cannot.
        implementation = "xla"
    if causal and not (isinstance(query_offset, int) and query_offset == 0):
        # The fused kernels' is_causal aligns queries and keys at the start; a cache needs the full mask.
        mask, causal = _allowed_Bx1xTxS(t, s, causal, kv_mask_BxS, segment_ids_BxT, query_offset), False
    elif segment_ids_BxT is None:
        mask = None if kv_mask_BxS is None else kv_mask_BxS[:, None, None, :]
    else:  # is_causal stays with the kernel (cuDNN skips the blocks above the diagonal)
        mask = _allowed_Bx1xTxS(t, s, False, kv_mask_BxS, segment_ids_BxT)
    if bias_BxNxTxS is not None and implementation == "cudnn":
        bias_BxNxTxS = bias_BxNxTxS.astype(q_BxTxNxH.dtype)  # cuDNN takes the bias in the inputs' dtype
    return jax.nn.dot_product_attention(
        q_BxTxNxH, k, v, bias=bias_BxNxTxS, mask=mask, scale=scale, is_causal=causal,
        implementation=None if implementation == "xla" else implementation)


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
    scores_BxNxTxS = jnp.where(allowed_Bx1xTxS, scores_BxNxTxS, _MASKED)
    probs_BxNxTxS = jax.nn.softmax(scores_BxNxTxS, axis=-1)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxNxTxS.shape)
        probs_BxNxTxS = jnp.where(keep, probs_BxNxTxS / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS.astype(v.dtype), v)


def heads_first(x_BxTxNxH):
    """B x T x N x H -> (B*N) x T x H, the layout of the batched products (and of caches)."""
    b, t, n, h = x_BxTxNxH.shape
    return x_BxTxNxH.transpose(0, 2, 1, 3).reshape(b * n, t, h)


def _heads_last(x_XxTxH, b):
    x, t, h = x_XxTxH.shape
    return x_XxTxH.reshape(b, x // b, t, h).transpose(0, 2, 1, 3)


def _queries_grouped(q_BxTxNxH, groups: int):
    """B x T x N x H -> (B*K) x (G*T) x H: the G = N/K query heads that share a key/value head
    as G*T query rows (rows g*T..g*T+T-1 are head k*G + g)."""
    if groups == 1:
        return heads_first(q_BxTxNxH)
    b, t, n, h = q_BxTxNxH.shape
    return q_BxTxNxH.reshape(b, t, n // groups, groups, h).transpose(0, 2, 3, 1, 4).reshape(-1, groups * t, h)


def _queries_grouped_transposed(x_BxTxNxH, groups: int):
    """`_queries_grouped`'s (B*K) x H x (G*T): the left operand of a product that contracts the
    query rows. XLA:CPU runs a batched product contracting its operands' middle dimension at half
    the speed of one contracting the left operand's last (p^T . do: 3.1 against 1.6 ms per layer
    in gpt2_tiny), and folds a bare transpose back into the product, so this copy ends in a reshape."""
    b, t, n, h = x_BxTxNxH.shape
    return x_BxTxNxH.reshape(b, t, n // groups, groups, h).transpose(0, 2, 4, 3, 1).reshape(-1, h, groups * t)


def _keys_from_transposed(x_XxHxS, b: int, kv_cache_layout: bool):
    """A key-side gradient computed as (B*K) x H x S -> the layout of the keys."""
    if kv_cache_layout:
        return x_XxHxS.swapaxes(1, 2)
    x, h, s = x_XxHxS.shape
    return x_XxHxS.reshape(b, x // b, h, s).transpose(0, 3, 1, 2)


def _queries_ungrouped(x_XxGTxH, b: int, groups: int):
    """The inverse of `_queries_grouped`."""
    if groups == 1:
        return _heads_last(x_XxGTxH, b)
    x, gt, h = x_XxGTxH.shape
    return x_XxGTxH.reshape(b, x // b, groups, gt // groups, h).transpose(0, 3, 1, 2, 4).reshape(b, gt // groups, -1, h)


def _score_terms(allowed_Bx1xTxS, bias_BxNxTxS):
    """What the scores get added: 0 where allowed and _MASKED elsewhere, plus the bias, if any:
    (B or 1) x (N or 1) x T x S. The mask is added rather than selected: XLA:CPU then fuses it,
    with the softmax, into the product; a select was a pass of its own (the scores, softmax and
    p.v of one gpt2_tiny layer: 5.0 -> 3.6 ms). _MASKED absorbs any score smaller than about 1e22
    in size: a masked score is _MASKED either way."""
    mask_Bx1xTxS = jnp.where(allowed_Bx1xTxS, 0.0, _MASKED).astype(jnp.float32)
    return mask_Bx1xTxS if bias_BxNxTxS is None else mask_Bx1xTxS + bias_BxNxTxS.astype(jnp.float32)


def _masked_scores(q_XxTxH, k_XxSxH, allowed_Bx1xTxS, bias_BxNxTxS, b):
    s_XxTxS = jnp.einsum("xth,xsh->xts", q_XxTxH, k_XxSxH, preferred_element_type=jnp.float32)
    terms = _score_terms(allowed_Bx1xTxS, bias_BxNxTxS)
    x, t, s = s_XxTxS.shape
    if terms.shape[:2] == (1, 1):
        return s_XxTxS + terms[0]
    return (s_XxTxS.reshape(b, x // b, t, s) + terms).reshape(x, t, s)


def _query_blocks(t, s, causal, kv_mask_BxS, bias, padded_rows, kv_cache_layout, query_offset) -> tuple:
    """Causal self-attention's queries in 4 blocks, each attending to the keys up to its last row
    (rows, first row, last row + 1, keys): ((0, T/4, T/4), (T/4, T/2, T/2), ...). The keys after
    a block's last row are masked for all its rows, so their products and softmax were work whose
    result is zero: 4 blocks skip 3/8 of it. A gpt2_tiny layer's attention forward and backward
    (B=32, T=128, 6 heads of 32) 19.5-20.9 -> 13.9-14.2 ms, 2 or 8 blocks 14.7-18.2; the float32
    train step 6.4-6.9% faster, bf16 4%; gpt2_small's shapes at T=512 91-94 -> 74-78 ms.
    One block of all rows over all keys, ((0, None, None),), where a row could see no key at all (a
    key mask: it would spread its weight over the keys its block has, not all S), with a bias, for
    decoding (a cache, an offset, padded query rows) and below 32 rows a block."""
    offset_free = isinstance(query_offset, int) and query_offset == 0
    splits = causal and t == s and t % 4 == 0 and t >= 128 and offset_free and not kv_cache_layout
    if not splits or kv_mask_BxS is not None or bias is not None or padded_rows:
        return ((0, None, None),)
    rows = t // 4
    return tuple((i * rows, (i + 1) * rows, (i + 1) * rows) for i in range(4))


# `scale` (a Python float) multiplies the scores; `bias` (or None) is added to them; k and v
# are already (B*K) x S x H when `kv_cache_layout`; `groups` = N / K query heads share one
# key/value head (the mask is given for their G*T query rows); `native`: a few query rows over
# a decoding cache, run as one native kernel call (`few_rows.attends_natively`), its gradient
# the XLA form's; `blocks` (`_query_blocks`): the query rows' blocks and the keys each sees.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _explicit(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups, native, blocks):
    if native:
        return _native(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, groups)
    return _explicit_fwd(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups, native, blocks)[0]


def _native(q, k_XxSxH, v_XxSxH, allowed_Bx1xTxS, bias_BxNxTxS, scale, groups):
    """`_explicit`'s output as one `bf16_kernels.attend` call over a cache's (B*K) x S x H keys and values."""
    b = q.shape[0]
    q_XxTxH = _queries_grouped(q * jnp.asarray(scale, q.dtype), groups)
    x, t, _ = q_XxTxH.shape
    terms = _score_terms(allowed_Bx1xTxS, bias_BxNxTxS)
    if terms.shape[1] == 1:  # the mask alone: one row for all products (A = 1) or one a sequence (A = B)
        add_AxTxS = terms[:, 0]
    else:
        add_AxTxS = jnp.broadcast_to(terms, (b, x // b, t, terms.shape[-1])).reshape(x, t, -1)
    o_XxTxH = bf16_kernels.attend(q_XxTxH, k_XxSxH, v_XxSxH, add_AxTxS).astype(v_XxSxH.dtype)
    return _queries_ungrouped(o_XxTxH, b, groups)


def _explicit_fwd(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups, native, blocks):
    b = q.shape[0]
    q = q * jnp.asarray(scale, q.dtype)
    q_XxTxH = _queries_grouped(q, groups)
    k_XxSxH, v_XxSxH = (k, v) if kv_cache_layout else (heads_first(k), heads_first(v))
    ps, outs = [], []
    for r0, r1, ke in blocks:  # a bias keeps the rows in one block (`_query_blocks`), so it is whole
        p = jax.nn.softmax(_masked_scores(q_XxTxH[:, r0:r1], k_XxSxH[:, :ke], allowed_Bx1xTxS[:, :, r0:r1, :ke],
                                          bias_BxNxTxS, b), axis=-1)
        o = jnp.einsum("xts,xsh->xth", p.astype(v.dtype), v_XxSxH[:, :ke], preferred_element_type=jnp.float32)
        ps.append(p)
        outs.append(o.astype(v.dtype))
    o_XxTxH = jnp.concatenate(outs, axis=1)  # one block: no concatenation
    residuals = (_queries_grouped_transposed(q, groups), k_XxSxH, v_XxSxH, tuple(ps), o_XxTxH, allowed_Bx1xTxS,
                 bias_BxNxTxS)
    return _queries_ungrouped(o_XxTxH, b, groups), residuals


def _explicit_bwd(scale, kv_cache_layout, groups, native, blocks, residuals, do_BxTxNxH):
    qT_XxHxT, k_XxSxH, v_XxSxH, ps, o_XxTxH, allowed, bias = residuals
    b = do_BxTxNxH.shape[0]
    do_XxTxH = _queries_grouped(do_BxTxNxH, groups)
    doT_XxHxT = _queries_grouped_transposed(do_BxTxNxH, groups)
    f32 = {"preferred_element_type": jnp.float32}  # bf16 inputs, f32 accumulation
    s = k_XxSxH.shape[1]
    dqs, dkTs, dvTs = [], [], []
    for (r0, r1, ke), p_XxTxS in zip(blocks, ps):
        do = do_XxTxH[:, r0:r1]
        # dk and dv contract the query rows: computed transposed, (do^T . p)^T and (q^T . ds)^T
        dvTs.append(jnp.einsum("xht,xts->xhs", doT_XxHxT[:, :, r0:r1], p_XxTxS.astype(do.dtype), **f32))
        dp_XxTxS = jnp.einsum("xth,xsh->xts", do, v_XxSxH[:, :ke], **f32)
        o = o_XxTxH[:, r0:r1]
        delta_XxTx1 = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
        ds_f32_XxTxS = p_XxTxS * (dp_XxTxS - delta_XxTx1)
        ds_XxTxS = ds_f32_XxTxS.astype(qT_XxHxT.dtype)
        dqs.append(jnp.einsum("xts,xsh->xth", ds_XxTxS, k_XxSxH[:, :ke], **f32) * scale)
        dkTs.append(jnp.einsum("xht,xts->xhs", qT_XxHxT[:, :, r0:r1], ds_XxTxS, **f32))  # q carries the scale
    dq = jnp.concatenate(dqs, axis=1).astype(qT_XxHxT.dtype)
    dkT, dvT = (_summed_over_blocks(parts, s).astype(k_XxSxH.dtype) for parts in (dkTs, dvTs))
    zeros = jax.tree.map(jnp.zeros_like, allowed)
    dk, dv = (_keys_from_transposed(x, b, kv_cache_layout) for x in (dkT, dvT))
    # a bias keeps the rows in one block (`_query_blocks`): its ds is the whole scores'
    return _queries_ungrouped(dq, b, groups), dk, dv, zeros, _bias_grad(ds_f32_XxTxS, allowed, bias, b)


def _summed_over_blocks(parts_XxHxK, s):
    """The blocks' key-side gradients (X x H x their keys), each padded to all S keys, summed."""
    padded = [x if x.shape[2] == s else jnp.pad(x, ((0, 0), (0, 0), (0, s - x.shape[2]))) for x in parts_XxHxK]
    return functools.reduce(jnp.add, padded)


def _bias_grad(ds_XxTxS, allowed_Bx1xTxS, bias_BxNxTxS, b):
    """The scores' gradient is the bias's, summed over the dimensions the bias broadcasts over.
    Masked scores do not depend on the bias (a fully masked row would otherwise leak into it)."""
    if bias_BxNxTxS is None:
        return None
    x, t, s = ds_XxTxS.shape
    ds_BxNxTxS = jnp.where(allowed_Bx1xTxS, ds_XxTxS.reshape(b, x // b, t, s), 0.0)
    broadcast = tuple(i for i in (0, 1) if bias_BxNxTxS.shape[i] == 1 and ds_BxNxTxS.shape[i] != 1)
    return jnp.sum(ds_BxNxTxS, axis=broadcast, keepdims=True).astype(bias_BxNxTxS.dtype)


_explicit.defvjp(_explicit_fwd, _explicit_bwd)
