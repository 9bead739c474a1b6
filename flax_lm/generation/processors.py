"""Logits processing before a token is chosen, each step as `transformers` does it.

The order is that of `GenerationMixin._get_logits_processor`: repetition penalty, then
(sampling only) temperature, top-k, top-p and min-p. Removed tokens get -inf.
Shapes: B rows (sequences or beams), V vocabulary.
"""

import jax
import jax.numpy as jnp

from flax_lm import sharding

# Rows of scores greedy decoding reduces at once on CPU (see `greedy`).
_GREEDY_ROWS = 16


def repetition_penalty(scores_BxV: jax.Array, seen_BxV: jax.Array, penalty: float) -> jax.Array:
    """CTRL's penalty on every token the sequence holds (`seen_BxV`): a positive score is
    divided by `penalty`, a negative one multiplied, so either way the token gets less likely."""
    if penalty == 1.0:
        return scores_BxV
    penalised = jnp.where(scores_BxV < 0, scores_BxV * penalty, scores_BxV / penalty)
    return jnp.where(seen_BxV, penalised, scores_BxV)


def greedy(scores_BxV: jax.Array) -> jax.Array:
    """The best token of each row (B,), int32: the first of tied ones and the first NaN, as
    `jnp.argmax`. Elsewhere than on CPU `argmax` itself, a plain reduction there."""
    if sharding.target_platform() != "cpu":
        return jnp.argmax(scores_BxV, axis=-1).astype(jnp.int32)
    # XLA:CPU's argmax is a scalar loop over index and value pairs, and top_k a sort. Two plain
    # reductions, the maximum and then the first index holding it, are faster, but only on
    # blocks of rows that stay in cache: over 256 rows of 50257 scores XLA:CPU wrote two 51 MB
    # temporaries. On a Zen 4 CPU, 32 rows: argmax 4.1 ms, top_k 2.3, by blocks 1.2; 256 rows:
    # 28.9, 20.0 and 9.2 (bench/RESULTS.md).
    return jax.lax.map(_first_best, scores_BxV, batch_size=_GREEDY_ROWS)


def _first_best(scores_V: jax.Array) -> jax.Array:
    """One row's greedy token (`lax.map` runs it on blocks of rows at once)."""
    best = jnp.max(scores_V)   # NaN where the row has one
    holds_best_V = (scores_V == best) | jnp.isnan(scores_V)
    return jnp.min(jnp.where(holds_best_V, jnp.arange(scores_V.shape[0], dtype=jnp.int32), scores_V.shape[0]))


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
