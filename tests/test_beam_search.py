"""Beam search equal to `transformers` `generate(num_beams=...)` token for token: one prompt,
left-padded batches, several returned hypotheses, one or several end tokens, every
`early_stopping` mode, length and repetition penalties."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.experimental import io_callback

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax_lm.generation import CausalDecoder, GenerationConfig, generate  # noqa: E402
from flax_lm.interop import gpt2 as gpt2_interop  # noqa: E402
from flax_lm.models import gpt2  # noqa: E402

# A larger-than-default init makes the random model's choices decisive: no near-ties between
# beams that float32 rounding in torch and XLA could order differently.
TINY = gpt2.GPT2Config(vocab_size=80, max_len=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, initializer_range=0.1)
PROMPTS = [[5, 17, 33, 2, 60, 7, 8], [40, 41], [9, 3, 71, 12], [66], [23, 50, 4], [61, 13, 8, 34, 29]]
ENDS = (70, 71, 72)
N = 10


def _to_transformers(params, cfg):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **gpt2_interop.config_to_hf(cfg), bos_token_id=None, eos_token_id=None)).eval()
    state_dict = gpt2_interop.params_to_hf(params, cfg)
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}, strict=True)
    return hf


def _likely_ends(params, offset=1.5):
    """The parameters with every end token about `offset` more likely in the logits at every
    step, so that beams end at all lengths: the final LayerNorm gets a bias u (unit norm) and
    each end token's (tied) embedding gains offset * u."""
    params = jax.tree.map(np.array, params)
    u_D = np.random.default_rng(0).normal(size=TINY.d_model).astype(np.float32)
    u_D /= np.linalg.norm(u_D)
    params["ln_f"]["bias"] = u_D
    for token in ENDS:
        params["wte"]["embedding"][token] += offset * u_D
    return params


@pytest.fixture(scope="module")
def models():
    """Our model and HF's with the same weights, under the names "plain" (random), "ending"
    (end tokens likely) and "scanned" (plain weights, layers stacked)."""
    model = gpt2.GPT2LMHeadModel(TINY)
    plain = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]))
    ending = _likely_ends(plain)
    scanned_cfg = dataclasses.replace(TINY, scan_layers=True)
    scanned = gpt2_interop.params_from_hf(gpt2_interop.params_to_hf(plain, TINY), scanned_cfg)
    hf_plain = _to_transformers(plain, TINY)
    return {"plain": (model, plain, hf_plain),
            "ending": (model, ending, _to_transformers(ending, TINY)),
            "scanned": (gpt2.GPT2LMHeadModel(scanned_cfg), scanned, hf_plain)}


def _until_end(row, eos):
    ends = [i for i, token in enumerate(row) if token in eos]
    return row[:ends[0] + 1] if ends else row


def _transformers_new_tokens(hf, prompts, config: GenerationConfig):
    """HF beam search's new tokens per returned hypothesis, prompts left-padded with the
    attention mask, each row cut after its first end token as `generate` cuts ours."""
    width = max(map(len, prompts))
    pad = config.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(
            ids, attention_mask=mask, do_sample=False, num_beams=config.num_beams,
            max_new_tokens=config.max_new_tokens, length_penalty=config.length_penalty,
            early_stopping=config.early_stopping, num_return_sequences=config.num_return_sequences,
            repetition_penalty=config.repetition_penalty, eos_token_id=list(config.eos_token_ids) or None,
            pad_token_id=pad)
    return [_until_end(row, config.eos_token_ids) for row in out[:, width:].tolist()]


def _equal_to_transformers(models, name, prompts, config):
    """Our hypotheses (after checking that they are HF's)."""
    model, params, hf = models[name]
    ours = generate(CausalDecoder(model), params, prompts, config)
    assert ours == _transformers_new_tokens(hf, prompts, config)
    return ours


@pytest.mark.parametrize("name", ["plain", "scanned"])
def test_one_prompt_equals_transformers(models, name):
    # scanned: the cache has a leading layer axis, and its beams must still be reordered
    ours = _equal_to_transformers(models, name, PROMPTS[:1], GenerationConfig(max_new_tokens=8, num_beams=3))
    assert len(ours) == 1 and len(ours[0]) == 8


def test_left_padded_batch_returns_every_hypothesis_best_first(models):
    ours = _equal_to_transformers(models, "plain", PROMPTS[:3], GenerationConfig(
        max_new_tokens=N, num_beams=4, num_return_sequences=4))
    assert len(ours) == 12
    # a prompt's hypotheses differ: the beams really diverge
    assert all(len({tuple(r) for r in ours[4 * b:4 * b + 4]}) == 4 for b in range(3))


# Three end tokens with two beams: K = 8 candidates, and most of them may end. Each case makes
# a different part of the algorithm decide the result (found by breaking each on purpose).
END_CASES = {
    "early-3ends": dict(num_beams=2, num_return_sequences=2, eos_token_ids=ENDS, early_stopping=True),
    "heuristic-3ends": dict(num_beams=2, num_return_sequences=2, eos_token_ids=ENDS, early_stopping=False),
    "never-3ends": dict(num_beams=2, num_return_sequences=2, eos_token_ids=ENDS, early_stopping="never",
                        length_penalty=2.0),
    "early-1end": dict(num_beams=3, num_return_sequences=3, eos_token_ids=ENDS[:1], early_stopping=True),
    "short-1end": dict(num_beams=3, num_return_sequences=3, eos_token_ids=ENDS[:1], length_penalty=-1.5),
}


@pytest.mark.parametrize("case", END_CASES)
def test_end_tokens_early_stopping_and_length_penalty_equal_transformers(models, case):
    ours = _equal_to_transformers(models, "ending", PROMPTS, GenerationConfig(max_new_tokens=N, **END_CASES[case]))
    assert len(ours) == len(PROMPTS) * END_CASES[case]["num_return_sequences"]
    # hypotheses end in several ways: at different lengths, by an end token or at max_new_tokens
    assert len({(len(row), row[-1] in ENDS) for row in ours}) >= 2


def test_early_stopping_returns_once_every_beam_has_ended(models):
    model, params, _ = models["ending"]
    early, searched = (generate(CausalDecoder(model), params, PROMPTS, GenerationConfig(max_new_tokens=N, **kwargs))
                       for kwargs in (END_CASES["early-3ends"], END_CASES["heuristic-3ends"]))
    assert sum(map(len, early)) < sum(map(len, searched))


def test_repetition_penalty_equals_transformers(models):
    # the padding id is the end token (as GPT-2 sets it): the penalty must skip left padding
    config = GenerationConfig(max_new_tokens=N, num_beams=3, num_return_sequences=3, repetition_penalty=1.6,
                              eos_token_ids=ENDS[:1], pad_token_id=ENDS[0])
    ours = _equal_to_transformers(models, "ending", PROMPTS, config)
    model, params, _ = models["ending"]
    assert ours != generate(CausalDecoder(model), params, PROMPTS, dataclasses.replace(config, repetition_penalty=1.0))


class CountingDecoder(CausalDecoder):
    """Counts its forward passes (prefill and steps) on the host."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = 0

    def forward(self, *args):
        io_callback(self._count, None)
        return super().forward(*args)

    def _count(self):
        self.calls += 1

    # not interchangeable with a CausalDecoder in jit's cache of compiled functions
    def __hash__(self):
        return hash((type(self), self.model))

    def __eq__(self, other):
        return self is other


# prompts whose search ends early: every beam ended (early_stopping=True), or no running beam
# can beat the finished ones (the heuristic of early_stopping=False); or runs to max_new_tokens
@pytest.mark.parametrize("case,prompts", [("early-1end", [1, 3]), ("heuristic-3ends", [2, 4, 5]),
                                          ("no-end", [0, 1])])
def test_runs_as_many_model_passes_as_transformers(models, case, prompts):
    """The loop ends when transformers' does, not later, and the last step's tokens go
    through no pass: one pass is the prefill, then one a step but the last."""
    model, params, hf = models["ending"]
    config = GenerationConfig(max_new_tokens=N, **END_CASES.get(case, dict(num_beams=2)))
    prompts = [PROMPTS[i] for i in prompts]
    decoder = CountingDecoder(model)
    assert generate(decoder, params, prompts, config) == _transformers_new_tokens(hf, prompts, config)
    hf_calls = []
    hook = hf.register_forward_hook(lambda *_: hf_calls.append(1))
    try:
        _transformers_new_tokens(hf, prompts, config)
    finally:
        hook.remove()
    assert decoder.calls == len(hf_calls)
    assert (len(hf_calls) == N) == (case == "no-end")
