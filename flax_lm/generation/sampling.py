"""Greedy decoding and sampling, the whole loop in one jitted function (a `lax.while_loop` for
each phase of `growing`).

The prompt is prefilled in one pass, which gives every row its first token; then each
iteration runs the last tokens through the model against the cache and picks the next ones.
Rows that produced an end token are finished: they receive the padding id from then on, and
the loop stops as soon as all rows are finished or `max_new_tokens` are made.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import io_callback

from flax_lm.generation import growing, processors
from flax_lm.generation.decoder import left_pad_positions
from flax_lm.generation.settings import GenerationConfig


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def sample(decoder, params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, config: GenerationConfig,
           streamer=None, context=None) -> jax.Array:
    """New tokens B x max_new_tokens (padding after a row finishes) for left-padded prompts.

    `streamer`, if given, is called on the host with each step's tokens (B,) as they are made.
    `context` is the decoder's conditioning, one row per prompt (see `decoder.start`).
    """
    B, P = prompt_BxP.shape
    prepared = decoder.prepare(params)
    N = config.max_new_tokens
    mask_BxS = jnp.concatenate([prompt_mask_BxP.astype(bool), jnp.ones((B, N - 1), bool)], axis=1)
    positions_BxP = left_pad_positions(prompt_mask_BxP)
    phases = growing.phases(decoder, prepared, B, P, N)
    cache = decoder.start(prepared, context, B, phases[0])
    logits_Bx1xV, cache = decoder.forward(prepared, prompt_BxP, mask_BxS[:, :phases[0]], positions_BxP, cache, 0)
    V = logits_Bx1xV.shape[-1]
    seen_BxV = processors.seen_tokens(prompt_BxP, prompt_mask_BxP, V)
    eos_E = jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)
    key = jax.random.PRNGKey(config.seed)

    def choose(i, logits_BxV, seen_BxV):
        scores_BxV = processors.repetition_penalty(logits_BxV.astype(jnp.float32), seen_BxV, config.repetition_penalty)
        if config.greedy:
            return processors.greedy(scores_BxV)
        scores_BxV = processors.warp(scores_BxV, temperature=config.temperature, k=config.top_k, p=config.top_p,
                                     minimum_p=config.min_p)
        return jax.random.categorical(jax.random.fold_in(key, i), scores_BxV, axis=-1).astype(jnp.int32)

    def pick(i, logits_BxV, out_BxN, seen_BxV, finished_B):
        """Token i of every row (B) after `logits_BxV`, and the state with it."""
        token_B = jnp.where(finished_B, config.pad_token_id, choose(i, logits_BxV, seen_BxV))
        if streamer is not None:
            io_callback(streamer, None, token_B, ordered=True)
        out_BxN = out_BxN.at[:, i].set(token_B)
        seen_BxV = seen_BxV.at[jnp.arange(B), token_B].set(True)
        return token_B, out_BxN, seen_BxV, finished_B | jnp.isin(token_B, eos_E)

    def body_for(length):
        def body(carry):  # step i: token i through the model, then token i + 1
            i, cache, (token_B, *state) = carry
            position_Bx1 = (prompt_mask_BxP.sum(axis=1) + i)[:, None].astype(jnp.int32)
            logits_Bx1xV, cache = decoder.forward(prepared, token_B[:, None], mask_BxS[:, :length], position_Bx1,
                                                  cache, P + i)
            return i + 1, cache, pick(i + 1, logits_Bx1xV[:, 0], *state)
        return body

    def running(carry):
        *_, finished_B = carry[2]
        return ~finished_B.all()

    out_BxN = jnp.full((B, N), config.pad_token_id, jnp.int32)
    carry = (0, cache, pick(0, logits_Bx1xV[:, 0], out_BxN, seen_BxV, jnp.zeros(B, bool)))
    # As in transformers, a token goes through the model only if another is to follow it:
    # one pass for the prompt, then one for each token but the last.
    _, _, (_, out_BxN, _, _) = growing.while_loop(decoder, running, body_for, carry, phases, P)
    return out_BxN
