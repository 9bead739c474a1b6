"""Softmax attention that never stores its T x S scores: they are recomputed from q and k in
every product that reads them, in float32, with a hand-written backward pass.

Where memory traffic, not FLOPs, bounds attention (a TPU at T=1024 with XLA attention), storing
the float32 scores and reading them back in each pass costs more than computing q.k^T again:
on the TPU compiler's cost model the Llama-style 125M train step on v5e-4 (8 x 1024 a chip, full
remat, loss unchunked) models at 99.5 ms and 69.7 GB moved a chip, against 116.7 ms and 84.9 GB
with `explicit` (which stores them) and 133.1 ms and 96.2 GB with `xla`. The softmax is the
same float32 one: the row maximum is taken from 16-bit scores (it only shifts the exponent;
softmax does not depend on it), the row sum and the probabilities from float32 scores. The
backward pass keeps the row maximum and sum (B*K x G*T each) instead of the probabilities.
The layout (query rows grouped by key/value head, `kv_cache_layout`) is `explicit_attention`'s.
"""

import functools

import jax
import jax.numpy as jnp

from flax_lm.ops import explicit_attention as ex


def attention(q_BxTxNxH, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale: float, kv_cache_layout: bool, groups: int):
    """softmax(scale * q k^T + bias, masked where not `allowed`) v, B x T x N x H in q's dtype;
    the arguments are `explicit_attention.attention`'s."""
    if groups > 1:
        allowed_Bx1xTxS = jnp.tile(allowed_Bx1xTxS, (1, 1, groups, 1))
    return _recompute(q_BxTxNxH, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups)


def _scores(q_XxTxH, k_XxSxH, terms, b, dtype=jnp.float32):
    """The masked scores, X x T x S float32, from a product whose output is `dtype`."""
    s_XxTxS = jnp.einsum("xth,xsh->xts", q_XxTxH, k_XxSxH, preferred_element_type=dtype).astype(jnp.float32)
    return ex._plus_score_terms(s_XxTxS, terms, b)


def _scores_terms_like(terms, b, shape_XxSxT):
    """`terms` as X x T x S (or broadcastable), to add to scores of that shape."""
    x, s, t = shape_XxSxT
    if terms.shape[:2] == (1, 1):
        return terms[0]
    return jnp.broadcast_to(terms, (b, x // b, t, s)).reshape(x, t, s)


def _probabilities(q_XxTxH, k_XxSxH, terms, b, max_XxTx1, sum_XxTx1):
    return jnp.exp(_scores(q_XxTxH, k_XxSxH, terms, b) - max_XxTx1) / sum_XxTx1


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _recompute(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups):
    return _recompute_fwd(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups)[0]


def _recompute_fwd(q, k, v, allowed_Bx1xTxS, bias_BxNxTxS, scale, kv_cache_layout, groups):
    b = q.shape[0]
    q = q * jnp.asarray(scale, q.dtype)
    q_XxTxH = ex._queries_grouped(q, groups)
    k_XxSxH, v_XxSxH = (k, v) if kv_cache_layout else (ex.heads_first(k), ex.heads_first(v))
    terms = ex._score_terms(allowed_Bx1xTxS, bias_BxNxTxS)
    # Three products of q and k, each fused with what reads it (the compiler merges identical
    # products and then stores the result, so each is written differently): the maximum from 16-bit scores
    # (a different product, so that the compiler does not merge it with the float32 ones and
    # store its result), the sum, and the probabilities fed to p.v.
    max_XxTx1 = jax.lax.stop_gradient(jnp.max(_scores(q_XxTxH, k_XxSxH, terms, b, q.dtype), axis=-1, keepdims=True))
    sum_XxTx1 = jnp.sum(jnp.exp(_scores(q_XxTxH, k_XxSxH, terms, b) - max_XxTx1), axis=-1, keepdims=True)
    # the probabilities from k.q^T, transposed: the same product as the sum's would be merged with it
    sT_XxSxT = jnp.einsum("xsh,xth->xst", k_XxSxH, q_XxTxH, preferred_element_type=jnp.float32)
    pT_XxSxT = jnp.exp(sT_XxSxT + jnp.swapaxes(_scores_terms_like(terms, b, sT_XxSxT.shape), -1, -2)
                       - jnp.swapaxes(max_XxTx1, 1, 2)) / jnp.swapaxes(sum_XxTx1, 1, 2)
    p_XxTxS = jnp.swapaxes(pT_XxSxT.astype(v.dtype), 1, 2)
    o_XxTxH = jnp.einsum("xts,xsh->xth", p_XxTxS.astype(v.dtype), v_XxSxH,
                         preferred_element_type=jnp.float32).astype(v.dtype)
    residuals = (q_XxTxH, k_XxSxH, v_XxSxH, max_XxTx1, sum_XxTx1, o_XxTxH, allowed_Bx1xTxS, bias_BxNxTxS)
    return ex._queries_ungrouped(o_XxTxH, b, groups), residuals


def _recompute_bwd(scale, kv_cache_layout, groups, residuals, do_BxTxNxH):
    q_XxTxH, k_XxSxH, v_XxSxH, max_XxTx1, sum_XxTx1, o_XxTxH, allowed, bias = residuals
    b = do_BxTxNxH.shape[0]
    p_XxTxS = _probabilities(q_XxTxH, k_XxSxH, ex._score_terms(allowed, bias), b, max_XxTx1, sum_XxTx1)
    do_XxTxH = ex._queries_grouped(do_BxTxNxH, groups)
    f32 = {"preferred_element_type": jnp.float32}
    dvT = jnp.einsum("xht,xts->xhs", ex._queries_grouped_transposed(do_BxTxNxH, groups),
                     p_XxTxS.astype(do_XxTxH.dtype), **f32)
    dp_XxTxS = jnp.einsum("xth,xsh->xts", do_XxTxH, v_XxSxH, **f32)
    delta_XxTx1 = jnp.sum(do_XxTxH.astype(jnp.float32) * o_XxTxH.astype(jnp.float32), axis=-1, keepdims=True)
    ds_f32_XxTxS = p_XxTxS * (dp_XxTxS - delta_XxTx1)
    ds_XxTxS = ds_f32_XxTxS.astype(q_XxTxH.dtype)
    dq = (jnp.einsum("xts,xsh->xth", ds_XxTxS, k_XxSxH, **f32) * scale).astype(q_XxTxH.dtype)
    dk = jnp.einsum("xts,xth->xsh", ds_XxTxS, q_XxTxH, **f32).astype(k_XxSxH.dtype)  # q carries the scale
    dv = jnp.swapaxes(dvT, 1, 2).astype(v_XxSxH.dtype)
    if not kv_cache_layout:
        dk, dv = ex.heads_last(dk, b), ex.heads_last(dv, b)
    zeros = jax.tree.map(jnp.zeros_like, allowed)
    return ex._queries_ungrouped(dq, b, groups), dk, dv, zeros, ex._bias_grad(ds_f32_XxTxS, allowed, bias, b)


_recompute.defvjp(_recompute_fwd, _recompute_bwd)
