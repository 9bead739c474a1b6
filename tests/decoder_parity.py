"""What the decoder families' tests share: left-padded batches as transformers' generate() makes
them, and the harness that checks greedy, early-ending and beam search decoding against generate()."""

import numpy as np
import torch

from flax_lm.generation import CausalDecoder, GenerationConfig, generate

PROMPTS = [[5, 17, 33, 2, 60, 7, 8], [40, 41], [9, 3, 71, 12]]


def left_padded(prompts, pad=0):
    """(ids, mask, positions) of a left-padded batch, positions as transformers' generate makes them."""
    width = max(map(len, prompts))
    ids = np.array([[pad] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = np.where(mask, np.cumsum(mask, axis=-1) - 1, 1)
    return ids, mask, positions


def cut_after(row, eos):
    """`row` up to and with its first `eos` (ours stop there; transformers pads after it)."""
    return row[:row.index(eos) + 1] if eos is not None and eos in row else row


def hf_generate(hf, prompts, **kwargs):
    """HF's new tokens per returned sequence (left-padded batch), cut after the first eos as ours are."""
    ids, mask, _ = left_padded(prompts)
    width = ids.shape[1]
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), pad_token_id=0, do_sample=False,
                          **kwargs)[:, width:].tolist()
    return [cut_after(row, kwargs.get("eos_token_id")) for row in out]


def assert_generate_equals_transformers(hf, model, params):
    """Our greedy decoding (to the length limit, and ending at an eos some row makes) and beam
    search (3 beams, 2 returned sequences each) of `PROMPTS` give `hf.generate()`'s tokens.
    `hf` should make decisive next-token choices (a large init), not float32 near-ties."""
    decoder = CausalDecoder(model)
    greedy = generate(decoder, params, PROMPTS, GenerationConfig(max_new_tokens=10))
    assert greedy == hf_generate(hf, PROMPTS, max_new_tokens=10, eos_token_id=None)
    eos = greedy[0][3]  # a token greedy decoding makes, so that a row ends early
    ending = generate(decoder, params, PROMPTS, GenerationConfig(max_new_tokens=10, eos_token_ids=(eos,)))
    assert ending == hf_generate(hf, PROMPTS, max_new_tokens=10, eos_token_id=eos)
    assert any(len(row) < 10 for row in ending)
    beams = generate(decoder, params, PROMPTS, GenerationConfig(max_new_tokens=8, num_beams=3,
                                                                num_return_sequences=2))
    assert beams == hf_generate(hf, PROMPTS, max_new_tokens=8, num_beams=3, num_return_sequences=2,
                                eos_token_id=None)
    assert len(beams) == 6 and beams[0] != beams[1]
