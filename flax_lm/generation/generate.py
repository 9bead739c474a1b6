"""`generate`: token-id prompts in, continuations out, with any strategy (greedy, sampling,
beam search). Prompts of different lengths are left-padded into one batch."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from flax_lm.data import length_buckets
from flax_lm.errors import UserError
from flax_lm.generation import beam_search, sampling
from flax_lm.generation.settings import GenerationConfig


def generate(decoder, params, prompts: list[list[int]], config: GenerationConfig, streamer=None) -> list[list[int]]:
    """The new tokens of every prompt: num_return_sequences lists per prompt, prompt-major,
    each ending at its first end token (included) or after max_new_tokens.

    A decoder-only model continues its prompts, left-padded into one batch. An encoder-decoder
    reads each prompt with its encoder (right-padded, as `transformers` tokenizers pad T5) and
    its decoder starts from `config.decoder_start_token_id`.

    A prompt longer than the model's context is a UserError; otherwise max_new_tokens is cut to
    what the context holds: the prompt and every new token but the last, which goes through no
    pass of the model (a prompt as long as the context still gets one token, as in
    transformers). `streamer(tokens_B)` sees each step's tokens on the host (greedy and sampling
    only). `params` may be the decoder's `prepared(params)`, made once for many calls.
    """
    config = config.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("a prompt is empty; give at least one token to continue")
    vocab = decoder.model.cfg.vocab_size
    if any(not 0 <= token < vocab for p in prompts for token in p):
        raise UserError(f"a prompt has a token id outside the model's vocabulary (0 to {vocab - 1}); "
                        f"was it tokenized for another model?")
    longest = max(len(p) for p in prompts)
    if decoder.encoder_decoder and longest > decoder.max_len:
        raise UserError(f"an input has {longest} tokens and the model takes at most {decoder.max_len} "
                        f"(model.max_len); shorten it")
    copies = config.num_return_sequences if config.num_beams == 1 else 1
    rows = [p for p in prompts for _ in range(copies)]
    context = None
    if decoder.encoder_decoder:
        # inputs padded to a bucket length, so that batches of other lengths reuse the compiled loop
        width = length_buckets.bucket_for(longest, length_buckets.bucket_lengths(decoder.max_len))
        context = tuple(jnp.asarray(a) for a in _padded(rows, config.pad_token_id, left=False, width=width))
        rows = [[config.decoder_start_token_id]] * len(rows)
    P = max(len(p) for p in rows)
    room = decoder.max_len - P + 1
    if room < 1:
        raise UserError(f"the prompt has {P} tokens and the model's context is {decoder.max_len}: "
                        f"no room to generate; shorten the prompt")
    config = dataclasses.replace(config, max_new_tokens=min(config.max_new_tokens, room))
    ids_BxP, mask_BxP = (jnp.asarray(a) for a in _padded(rows, config.pad_token_id, left=True))
    if config.num_beams > 1:
        out = beam_search.beam_search(decoder, params, ids_BxP, mask_BxP, config, context=context)
    else:
        out = sampling.sample(decoder, params, ids_BxP, mask_BxP, config, streamer, context=context)
    return [_until_end(row, config.eos_token_ids) for row in np.asarray(out).tolist()]


def _padded(rows: list[list[int]], pad_id: int, left: bool, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), both B x `width` (default: the longest row) int32, the rows padded on the left
    or the right."""
    width = width or max(len(r) for r in rows)
    ids_BxP = np.full((len(rows), width), pad_id, np.int32)
    mask_BxP = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids_BxP[i, span], mask_BxP[i, span] = r, 1
    return ids_BxP, mask_BxP


def _until_end(tokens: list[int], eos_token_ids: tuple[int, ...]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[:i + 1]
    return tokens
