"""Logits processing before a token is chosen, each step as `transformers` does it.

The order is that of `GenerationMixin._get_logits_processor`: repetition penalty, then
(sampling only) temperature, top-k, top-p and min-p. Removed tokens get -inf.
Shapes: B rows (sequences or beams), V vocabulary.
"""

import jax
import jax.numpy as jnp


def repetition_penalty(scores_BxV: jax.Array, seen_BxV: jax.Array, penalty: float) -> jax.Array:
    """CTRL's penalty on every token the sequence holds (`seen_BxV`): a positive score is
    divided by `penalty`, a negative one multiplied, so either way the token gets less likely."""
    if penalty == 1.0:
        return scores_BxV
    penalised = jnp.where(scores_BxV < 0, scores_BxV * penalty, scores_BxV / penalty)
    return jnp.where(seen_BxV, penalised, scores_BxV)


def greedy(scores_BxV: jax.Array) -> jax.Array:
    """The best token of each row (B,), int32: the first of tied ones and the first NaN, as
    `jnp.argmax`."""
    return jnp.argmax(scores_BxV, axis=-1).astype(jnp.int32)


def seen_tokens(ids_BxT: jax.Array, mask_BxT: jax.Array, vocab_size: int) -> jax.Array:
    """B x V: which tokens each row holds where `mask_BxT` is set (prompt padding is left out,
    as `transformers` leaves it out of the repetition penalty)."""
    rows_Bx1 = jnp.arange(ids_BxT.shape[0])[:, None]
    ids_BxT = jnp.where(mask_BxT.astype(bool), ids_BxT, vocab_size)   # out of range: dropped
    return jnp.zeros((ids_BxT.shape[0], vocab_size), bool).at[rows_Bx1, ids_BxT].set(True, mode="drop")


def top_k(scores_BxV: jax.Array, k: int) -> jax.Array:
    """Keeps the k best tokens (and any tied with the k-th); 0 keeps all."""
    if k <= 0 or k >= scores_BxV.shape[-1]:
        return scores_BxV
    kth_Bx1 = jax.lax.top_k(scores_BxV, k)[0][:, -1:]
    return jnp.where(scores_BxV < kth_Bx1, -jnp.inf, scores_BxV)


def top_p(scores_BxV: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering: keeps the most likely tokens whose probabilities sum to at least p.

    As `transformers.TopPLogitsWarper`: sorted ascending, a token goes when the probability
    mass up to and including it is at most 1 - p; the most likely token always stays.
    """
    if p >= 1.0:
        return scores_BxV
    order_BxV = jnp.argsort(scores_BxV, axis=-1)   # ascending
    sorted_BxV = jnp.take_along_axis(scores_BxV, order_BxV, axis=-1)
    cumulative_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
    remove_sorted_BxV = (cumulative_BxV <= 1.0 - p).at[:, -1].set(False)
    remove_BxV = jnp.zeros_like(remove_sorted_BxV).at[jnp.arange(scores_BxV.shape[0])[:, None], order_BxV].set(
        remove_sorted_BxV)
    return jnp.where(remove_BxV, -jnp.inf, scores_BxV)


def min_p(scores_BxV: jax.Array, p: float) -> jax.Array:
    """Keeps tokens whose probability is at least p times the most likely token's; 0 keeps all."""
    if p <= 0.0:
        return scores_BxV
    probs_BxV = jax.nn.softmax(scores_BxV, axis=-1)
    keep_BxV = probs_BxV >= p * probs_BxV.max(axis=-1, keepdims=True)
    return jnp.where(keep_BxV, scores_BxV, -jnp.inf)


def warp(scores_BxV: jax.Array, *, temperature: float, k: int, p: float, minimum_p: float) -> jax.Array:
    """The sampling warpers in `transformers` order: temperature, top-k, top-p, min-p."""
    if temperature != 1.0:
        scores_BxV = scores_BxV / temperature
    return min_p(top_p(top_k(scores_BxV, k), p), minimum_p)
