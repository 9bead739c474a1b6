"""`generate`: token-id prompts in, continuations out, with any strategy (greedy, sampling,
beam search). Prompts of different lengths are left-padded into one batch."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from flax_lm.errors import UserError
from flax_lm.generation import beam_search, sampling
from flax_lm.generation.settings import GenerationConfig


def generate(decoder, params, prompts: list[list[int]], config: GenerationConfig, streamer=None) -> list[list[int]]:
    """The new tokens of every prompt: num_return_sequences lists per prompt, prompt-major,
    each ending at its first end token (included) or after max_new_tokens.

    A prompt that leaves no room in the model's context is a UserError; otherwise
    max_new_tokens is cut to the room there is. `streamer(tokens_B)` sees each step's tokens
    on the host (greedy and sampling only).
    """
    config = config.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("a prompt is empty; give at least one token to continue")
    P = max(len(p) for p in prompts)
    room = decoder.max_len - P
    if room < 1:
        raise UserError(f"the prompt has {P} tokens and the model's context is {decoder.max_len}: "
                        f"no room to generate; shorten the prompt")
    config = dataclasses.replace(config, max_new_tokens=min(config.max_new_tokens, room))
    copies = config.num_return_sequences if config.num_beams == 1 else 1
    rows = [p for p in prompts for _ in range(copies)]
    ids_BxP = np.full((len(rows), P), config.pad_token_id, np.int32)
    mask_BxP = np.zeros((len(rows), P), np.int32)
    for i, p in enumerate(rows):
        ids_BxP[i, P - len(p):], mask_BxP[i, P - len(p):] = p, 1
    if config.num_beams > 1:
        out = beam_search.beam_search(decoder, params, jnp.asarray(ids_BxP), jnp.asarray(mask_BxP), config)
    else:
        out = sampling.sample(decoder, params, jnp.asarray(ids_BxP), jnp.asarray(mask_BxP), config, streamer)
    return [_until_end(row, config.eos_token_ids) for row in np.asarray(out).tolist()]


def _until_end(tokens: list[int], eos_token_ids: tuple[int, ...]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[:i + 1]
    return tokens
