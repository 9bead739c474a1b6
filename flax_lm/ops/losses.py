"""Losses shared by the tasks.

`linear_cross_entropy` fuses the output projection with softmax cross-entropy: it
walks the sequence in chunks and, under differentiation, computes the gradients
chunk by chunk in the forward pass, so the full B x T x V logits (and their
gradient) never exist. Chunks run along the sequence, so the batch axis keeps its
data-parallel sharding.

Label smoothing `eps` trains against (1 - eps) on the target plus eps spread evenly over the
vocabulary: a token's loss is lse - (1 - eps) * logit[target] - eps * mean(logits), and its
gradient softmax - (1 - eps) * onehot - eps / V.
"""

import functools

import jax
import jax.numpy as jnp

from flax_lm import backends



def linear_cross_entropy(hidden_BxTxD, weight_VxD, targets_BxT, weights_BxT, chunk_len: int = 0,
                         label_smoothing: float = 0.0) -> jax.Array:
    """sum over (b, t) of weights * -log softmax(hidden @ weight.T)[targets], in float32, or with
    `label_smoothing` eps the cross-entropy against the smoothed targets (see the module docstring).

    `chunk_len` 0 materialises all logits at once (plain cross-entropy); otherwise
    `chunk_len` sequence positions are projected at a time (T is padded to a multiple);
    -1 is the platform's choice (`Backend.loss_chunk_len`).
    """
    if chunk_len < 0:
        chunk_len = backends.current().loss_chunk_len()
    if chunk_len <= 0 or chunk_len >= hidden_BxTxD.shape[1]:
        logits_BxTxV = _logits(hidden_BxTxD, weight_VxD)
        return jnp.sum(_token_loss(logits_BxTxV, targets_BxT, label_smoothing) * weights_BxT)
    pad = -hidden_BxTxD.shape[1] % chunk_len
    if pad:
        hidden_BxTxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
        targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
        weights_BxT = jnp.pad(weights_BxT, ((0, 0), (0, pad)))
    return _chunked(chunk_len, float(label_smoothing), hidden_BxTxD, weight_VxD, targets_BxT,
                    weights_BxT.astype(jnp.float32))


def _logits(hidden, weight_VxD):
    return jnp.einsum("...d,vd->...v", hidden, weight_VxD, preferred_element_type=jnp.float32)


def _lse_and_target(logits_BxTxV, targets_BxT):
    """(log-sum-exp over the vocabulary, the target's logit), both B x T."""
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    return lse_BxT, jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]


def _token_loss(logits_BxTxV, targets_BxT, eps: float):
    return _smoothed_loss(logits_BxTxV, *_lse_and_target(logits_BxTxV, targets_BxT), eps)


def _smoothed_loss(logits_BxTxV, lse_BxT, target_BxT, eps: float):
    if not eps:
        return lse_BxT - target_BxT
    return lse_BxT - (1.0 - eps) * target_BxT - eps * jnp.mean(logits_BxTxV, axis=-1)


def _split(x_BxT, chunk_len):
    """(B, T, ...) -> (T/c, c, B, ...): one transpose makes every chunk contiguous; the
    batch axis keeps its place (and sharding) inside each chunk."""
    t = x_BxT.shape[1]
    x_TxB = jnp.swapaxes(x_BxT, 0, 1)
    return x_TxB.reshape(t // chunk_len, chunk_len, *x_TxB.shape[1:])


def _merge(x_CxcxB, like_BxT):
    return jnp.swapaxes(x_CxcxB.reshape(-1, *x_CxcxB.shape[2:]), 0, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked(chunk_len, eps, hidden_BxTxD, weight_VxD, targets_BxT, weights_BxT):
    def body(total, chunk):
        h_cxBxD, y_cxB, w_cxB = chunk
        return total + jnp.sum(_token_loss(_logits(h_cxBxD, weight_VxD), y_cxB, eps) * w_cxB), None

    chunks = (_split(hidden_BxTxD, chunk_len), _split(targets_BxT, chunk_len), _split(weights_BxT, chunk_len))
    return jax.lax.scan(body, jnp.float32(0), chunks)[0]


def _chunked_fwd(chunk_len, eps, hidden_BxTxD, weight_VxD, targets_BxT, weights_BxT):
    vocab = weight_VxD.shape[0]

    def body(carry, chunk):
        total, dweight = carry
        h_cxBxD, y_cxB, w_cxB = chunk
        logits_cxBxV = _logits(h_cxBxD, weight_VxD)
        lse_cxB, target_cxB = _lse_and_target(logits_cxBxV, y_cxB)
        total = total + jnp.sum(_smoothed_loss(logits_cxBxV, lse_cxB, target_cxB, eps) * w_cxB)
        # d loss / d logits = (softmax - (1 - eps) * onehot - eps / V) * weight
        smoothed_cxBxV = (1.0 - eps) * jax.nn.one_hot(y_cxB, vocab) + eps / vocab
        dlogits_cxBxV = (jnp.exp(logits_cxBxV - lse_cxB[..., None]) - smoothed_cxBxV) * w_cxB[..., None]
        dlogits_cxBxV = dlogits_cxBxV.astype(hidden_BxTxD.dtype)
        dh_cxBxD = jnp.einsum("cbv,vd->cbd", dlogits_cxBxV, weight_VxD.astype(hidden_BxTxD.dtype),
                              preferred_element_type=jnp.float32).astype(hidden_BxTxD.dtype)
        dweight = dweight + jnp.einsum("cbv,cbd->vd", dlogits_cxBxV, h_cxBxD, preferred_element_type=jnp.float32)
        return (total, dweight), dh_cxBxD

    chunks = (_split(hidden_BxTxD, chunk_len), _split(targets_BxT, chunk_len), _split(weights_BxT, chunk_len))
    init = (jnp.float32(0), jnp.zeros(weight_VxD.shape, jnp.float32))
    (total, dweight_VxD), dh = jax.lax.scan(body, init, chunks)
    return total, (_merge(dh, hidden_BxTxD), dweight_VxD.astype(weight_VxD.dtype), targets_BxT, weights_BxT)


def _chunked_bwd(chunk_len, eps, residuals, g):
    dhidden, dweight, targets, weights = residuals
    zeros_like_targets = jnp.zeros(targets.shape, jax.dtypes.float0)
    return (dhidden * g.astype(dhidden.dtype), dweight * g.astype(dweight.dtype), zeros_like_targets,
            jnp.zeros_like(weights))


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
