"""The explicit attention implementation: softmax attention over (B*K) x T x H batched
products with a hand-written backward pass.

XLA:CPU runs it faster than its own derivative of XLA's attention (it is what
`model.attention="auto"` means on the CPU backend), and it reads a decoding cache in the cache's
own layout (`kv_cache_layout`, see `layers.write_cache`) without a copy.
"""

import functools

import jax
import jax.numpy as jnp

MASKED = -1e30  # finite, so a fully masked row gives a uniform row, never NaN


def attention(q_BxTxNxH, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale: float, kv_cache_layout: bool, groups: int):
    """softmax(scale * q k^T + bias, masked where not `allowed`) v, B x T x N x H in q's dtype.

    `k` and `v` are B x S x K x H, or (B*K) x S x H with `kv_cache_layout`; `groups` = N / K query
    heads share a key/value head, and `allowed_Bx1xTxS` is given for one query head (tiled over
    a group's G*T rows here). `bias_BxNxTxS` (or None) is added to the scaled scores."""
    if groups > 1:  # the G query heads of a key/value head are G*T query rows of one product
        allowed_Bx1xTxS = jnp.tile(allowed_Bx1xTxS, (1, 1, groups, 1))
    return _explicit(q_BxTxNxH, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups)


def heads_first(x_BxTxNxH):
    """B x T x N x H -> (B*N) x T x H, the layout of the batched products (and of caches)."""
    b, t, n, h = x_BxTxNxH.shape
    return x_BxTxNxH.transpose(0, 2, 1, 3).reshape(b * n, t, h)


def heads_last(x_XxTxH, b):
    """(B*N) x T x H -> B x T x N x H, the inverse of `heads_first`."""
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
        return heads_last(x_XxGTxH, b)
    x, gt, h = x_XxGTxH.shape
    return x_XxGTxH.reshape(b, x // b, groups, gt // groups, h).transpose(0, 3, 1, 2, 4).reshape(b, gt // groups, -1, h)


def _score_terms(allowed_Bx1xTxS, bias_BxNxTxS):
    """What the scores get added: 0 where allowed and MASKED elsewhere, plus the bias, if any:
    (B or 1) x (N or 1) x T x S. The mask is added rather than selected: XLA:CPU then fuses it,
    with the softmax, into the product; a select was a pass of its own (the scores, softmax and
    p.v of one gpt2_tiny layer: 5.0 -> 3.6 ms). MASKED absorbs any score smaller than about 1e22
    in size: a masked score is MASKED either way."""
    mask_Bx1xTxS = jnp.where(allowed_Bx1xTxS, 0.0, MASKED).astype(jnp.float32)
    return mask_Bx1xTxS if bias_BxNxTxS is None else mask_Bx1xTxS + bias_BxNxTxS.astype(jnp.float32)


def _plus_score_terms(s_XxTxS, terms, b: int):
    """Scores X x T x S (X = B*K, or B*N) plus `_score_terms`' (B or 1) x (N or 1) x T x S terms,
    added per batch and head without broadcasting terms shared by every row to X rows first."""
    x, t, s = s_XxTxS.shape
    if terms.shape[:2] == (1, 1):
        return s_XxTxS + terms[0]
    return (s_XxTxS.reshape(b, x // b, t, s) + terms).reshape(x, t, s)


def _masked_scores(q_XxTxH, k_XxSxH, allowed_Bx1xTxS, bias_BxNxTxS, b):
    s_XxTxS = jnp.einsum("xth,xsh->xts", q_XxTxH, k_XxSxH, preferred_element_type=jnp.float32)
    return _plus_score_terms(s_XxTxS, _score_terms(allowed_Bx1xTxS, bias_BxNxTxS), b)


# `scale` (a Python float) multiplies the scores; `bias` (or None) is added to them; k and v
# are already (B*K) x S x H when `kv_cache_layout`; `groups` = N / K query heads share one
# key/value head (the mask is given for their G*T query rows).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _explicit(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups):
    return _explicit_fwd(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups)[0]


def _explicit_fwd(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups):
    b = q.shape[0]
    q = q * jnp.asarray(scale, q.dtype)
    q_XxTxH = _queries_grouped(q, groups)
    k_XxSxH, v_XxSxH = (k, v) if kv_cache_layout else (heads_first(k), heads_first(v))
    p_XxTxS = jax.nn.softmax(_masked_scores(q_XxTxH, k_XxSxH, allowed_Bx1xTxS, bias_BxNxTxS, b), axis=-1)
    o_XxTxH = jnp.einsum("xts,xsh->xth", p_XxTxS.astype(v.dtype), v_XxSxH,
                         preferred_element_type=jnp.float32).astype(v.dtype)
    residuals = (_queries_grouped_transposed(q, groups), k_XxSxH, v_XxSxH, p_XxTxS, o_XxTxH, allowed_Bx1xTxS,
                 bias_BxNxTxS)
    return _queries_ungrouped(o_XxTxH, b, groups), residuals


def _explicit_bwd(scale, kv_cache_layout, groups, residuals, do_BxTxNxH):
    qT_XxHxT, k_XxSxH, v_XxSxH, p_XxTxS, o_XxTxH, allowed, bias = residuals
    b = do_BxTxNxH.shape[0]
    do_XxTxH = _queries_grouped(do_BxTxNxH, groups)
    f32 = {"preferred_element_type": jnp.float32}  # 16-bit inputs, float32 accumulation
    # dk and dv contract the query rows: computed transposed, (do^T . p)^T and (q^T . ds)^T
    dvT = jnp.einsum("xht,xts->xhs", _queries_grouped_transposed(do_BxTxNxH, groups), p_XxTxS.astype(do_XxTxH.dtype),
                     **f32)
    dp_XxTxS = jnp.einsum("xth,xsh->xts", do_XxTxH, v_XxSxH, **f32)
    delta_XxTx1 = jnp.sum(do_XxTxH.astype(jnp.float32) * o_XxTxH.astype(jnp.float32), axis=-1, keepdims=True)
    ds_f32_XxTxS = p_XxTxS * (dp_XxTxS - delta_XxTx1)
    ds_XxTxS = ds_f32_XxTxS.astype(qT_XxHxT.dtype)
    dq = (jnp.einsum("xts,xsh->xth", ds_XxTxS, k_XxSxH, **f32) * scale).astype(qT_XxHxT.dtype)
    dkT = jnp.einsum("xht,xts->xhs", qT_XxHxT, ds_XxTxS, **f32)  # q carries the scale
    dk, dv = (_keys_from_transposed(x.astype(k_XxSxH.dtype), b, kv_cache_layout) for x in (dkT, dvT))
    zeros = jax.tree.map(jnp.zeros_like, allowed)
    return _queries_ungrouped(dq, b, groups), dk, dv, zeros, _bias_grad(ds_f32_XxTxS, allowed, bias, b)


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
