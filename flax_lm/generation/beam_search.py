"""Beam search, the whole loop in one jitted function (a `lax.while_loop` for each phase of
`growing`), step for step as `transformers` (`GenerationMixin._beam_search`, without sampling).

Every prompt is repeated into W beams and prefilled once. Each step adds the beams' running
scores to the next-token log-probabilities and keeps the K best continuations over all W x V
of a prompt (K leaves room for W that did not end, even if every beam's best tokens are end
tokens). The best W that did not end run on; those among the W best candidates that ended
enter the W finished hypotheses, scored by their log-probability over length ** length_penalty.
The loop stops when max_new_tokens are made, or earlier once no prompt's running beams can
beat its finished hypotheses (by the heuristic that `early_stopping` chooses) or, with
early_stopping=True, every prompt has W finished hypotheses.

Shapes: B prompts, W beams per prompt, K candidates per prompt, V vocabulary, P padded
prompt length, N max_new_tokens, R num_return_sequences, M = W + K (finished hypotheses and
candidates together). Scores are float32 log-probabilities.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flax_lm.generation import growing, processors
from flax_lm.generation.decoder import left_pad_positions, reorder_cache
from flax_lm.generation.settings import GenerationConfig

# What transformers adds to a score to rule a candidate out; -inf would turn sums into nan.
EXCLUDED = -1.0e9


@functools.partial(jax.jit, static_argnums=(0, 4))
def beam_search(decoder, params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                config: GenerationConfig, context=None) -> jax.Array:
    """The R best hypotheses of every left-padded prompt, as new tokens (B * R) x N int32,
    prompt-major and best first; each row holds its end token, then the padding id.
    `context` is the decoder's conditioning, one row per prompt (see `decoder.start`)."""
    B, P = prompt_BxP.shape
    W, N, R = config.num_beams, config.max_new_tokens, config.num_return_sequences
    prepared = decoder.prepare(params)
    K = max(2, 1 + len(config.eos_token_ids)) * W
    eos_E = jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)
    # transformers divides by a Python float (length ** penalty in double precision, then
    # float32); a table computed the same way keeps every score bit for bit.
    divisor_N = jnp.asarray(np.arange(1, N + 1, dtype=np.float64) ** config.length_penalty, jnp.float32)
    stop_when_full = config.early_stopping != "never" and bool(config.early_stopping)

    # Row b * W + j is beam j of prompt b, as transformers expands its inputs.
    prompt_BWxP = jnp.repeat(prompt_BxP, W, axis=0)
    prompt_mask_BWxP = jnp.repeat(prompt_mask_BxP, W, axis=0)
    mask_BWxS = jnp.concatenate([prompt_mask_BWxP.astype(bool), jnp.ones((B * W, N - 1), bool)], axis=1)
    context_BW = jax.tree.map(lambda x: jnp.repeat(x, W, axis=0), context)
    phases = growing.phases(decoder, prepared, B * W, P, N)
    logits_BWx1xV, cache = decoder.forward(prepared, prompt_BWxP, mask_BWxS[:, :phases[0]],
                                           left_pad_positions(prompt_mask_BWxP),
                                           decoder.start(prepared, context_BW, B * W, phases[0]), 0)
    V = logits_BWx1xV.shape[-1]
    prompt_seen_BWxV = processors.seen_tokens(prompt_BWxP, prompt_mask_BWxP, V)
    first_row_B = jnp.arange(B, dtype=jnp.int32) * W

    def log_probs(i, logits_BWxV, running_BxWxN):
        """Next-token log-probabilities BW x V of beams holding i new tokens, penalised."""
        scores_BWxV = jax.nn.log_softmax(logits_BWxV.astype(jnp.float32), axis=-1)
        if config.repetition_penalty == 1.0:
            return scores_BWxV
        # only the i tokens made so far count
        made_BWxN = jnp.broadcast_to(jnp.arange(N) < i, (B * W, N))
        seen_BWxV = prompt_seen_BWxV | processors.seen_tokens(running_BxWxN.reshape(B * W, N), made_BWxN, V)
        return processors.repetition_penalty(scores_BWxV, seen_BWxV, config.repetition_penalty)

    def may_improve(i, running_scores_BxW, finished_scores_BxW, is_finished_BxW):
        """Whether the best running beam could still beat the worst finished hypothesis (B,),
        judged at the length `early_stopping` assumes it would end at."""
        if config.early_stopping == "never" and config.length_penalty > 0.0:
            divisor = float(N) ** config.length_penalty   # longer is better: it may run to the end
        else:
            divisor = divisor_N[i]                          # as long as it is now
        best_running_Bx1 = running_scores_BxW[:, :1] / divisor
        worst_finished_BxW = jnp.where(is_finished_BxW, finished_scores_BxW.min(axis=1, keepdims=True), EXCLUDED)
        return (best_running_Bx1 > worst_finished_BxW).any(axis=1)

    def select(i, logits_BWxV, beams):
        """The beam each running one continues (B x W) and the beams (those that run on, the
        finished hypotheses) after choosing token i from `logits_BWxV`."""
        running_BxWxN, running_scores_BxW, finished_BxWxN, finished_scores_BxW, is_finished_BxW, improvable_B, _ = beams
        # The K best continuations of each prompt over all its beams.
        totals_BxWxV = log_probs(i, logits_BWxV, running_BxWxN).reshape(B, W, V) + running_scores_BxW[:, :, None]
        top_scores_BxK, top_flat_BxK = jax.lax.top_k(totals_BxWxV.reshape(B, W * V), K)
        top_beam_BxK, top_token_BxK = top_flat_BxK // V, (top_flat_BxK % V).astype(jnp.int32)
        top_seqs_BxKxN = jnp.take_along_axis(running_BxWxN, top_beam_BxK[:, :, None], axis=1)
        top_seqs_BxKxN = top_seqs_BxKxN.at[:, :, i].set(top_token_BxK)
        ends_BxK = (i + 1 >= N) | jnp.isin(top_token_BxK, eos_E)

        # The W best that did not end run on (if fewer than W did not end, the loop stops below).
        alive_scores_BxK = top_scores_BxK + ends_BxK.astype(jnp.float32) * EXCLUDED
        next_BxW = jax.lax.top_k(alive_scores_BxK, W)[1]
        running_BxWxN = jnp.take_along_axis(top_seqs_BxKxN, next_BxW[:, :, None], axis=1)
        running_scores_BxW = jnp.take_along_axis(alive_scores_BxK, next_BxW, axis=1)
        source_beam_BxW = jnp.take_along_axis(top_beam_BxK, next_BxW, axis=1)

        # Those among the W best candidates that ended compete for the W finished slots.
        just_ended_BxK = ends_BxK & (jnp.arange(K) < W)
        candidate_BxK = top_scores_BxK / divisor_N[i]
        full_B = is_finished_BxW.all(axis=1) & stop_when_full
        candidate_BxK = candidate_BxK + full_B[:, None].astype(jnp.float32) * EXCLUDED
        candidate_BxK = candidate_BxK + (~improvable_B)[:, None].astype(jnp.float32) * EXCLUDED
        candidate_BxK = candidate_BxK + (~just_ended_BxK).astype(jnp.float32) * EXCLUDED
        merged_scores_BxM = jnp.concatenate([finished_scores_BxW, candidate_BxK], axis=1)
        keep_BxW = jax.lax.top_k(merged_scores_BxM, W)[1]
        finished_BxWxN = jnp.take_along_axis(
            jnp.concatenate([finished_BxWxN, top_seqs_BxKxN], axis=1), keep_BxW[:, :, None], axis=1)
        finished_scores_BxW = jnp.take_along_axis(merged_scores_BxM, keep_BxW, axis=1)
        is_finished_BxW = jnp.take_along_axis(
            jnp.concatenate([is_finished_BxW, just_ended_BxK], axis=1), keep_BxW, axis=1)

        improvable_B = improvable_B & may_improve(i, running_scores_BxW, finished_scores_BxW, is_finished_BxW)
        more = improvable_B.any() & ~(is_finished_BxW.all() & stop_when_full) & ~ends_BxK.all()
        return source_beam_BxW, (running_BxWxN, running_scores_BxW, finished_BxWxN, finished_scores_BxW,
                                 is_finished_BxW, improvable_B, more)

    def step(i, cache, state, phase_mask_BWxS):
        """Token i of every beam through the model, then token i + 1 chosen."""
        source_beam_BxW, beams = state
        cache = reorder_cache(cache, (first_row_B[:, None] + source_beam_BxW).reshape(B * W))
        token_BWx1 = beams[0][:, :, i].reshape(B * W, 1)
        position_BWx1 = (prompt_mask_BWxP.sum(axis=1) + i)[:, None].astype(jnp.int32)
        logits_BWx1xV, cache = decoder.forward(prepared, token_BWx1, phase_mask_BWxS, position_BWx1, cache, P + i)
        return i + 1, cache, select(i + 1, logits_BWx1xV[:, 0], beams)

    def body_for(length):
        return lambda carry: step(*carry, mask_BWxS[:, :length])

    def more(carry):  # the beams' last entry
        return carry[2][1][-1]

    # Only beam 0 starts live, so that the first step does not pick the same token W times.
    running_scores_BxW = jnp.zeros((B, W), jnp.float32).at[:, 1:].set(EXCLUDED)
    tokens_BxWxN = jnp.full((B, W, N), config.pad_token_id, jnp.int32)
    beams = (tokens_BxWxN, running_scores_BxW, tokens_BxWxN, jnp.full((B, W), EXCLUDED, jnp.float32),
             jnp.zeros((B, W), bool), jnp.ones(B, bool), jnp.asarray(True))
    # As in sampling (and transformers), the last tokens chosen go through no model pass.
    carry = (0, cache, select(0, logits_BWx1xV[:, 0], beams))
    _, _, (_, (_, _, finished_BxWxN, *_)) = growing.while_loop(decoder, more, body_for, carry, phases, P)
    # finished hypotheses are kept best first
    return finished_BxWxN[:, :R].reshape(B * R, N)
