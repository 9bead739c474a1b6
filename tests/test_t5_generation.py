"""Encoder-decoder generation equal to `transformers` `generate()` token for token: T5 with the
cross-attention keys and values computed once, greedy and beam search over a batch of sources
of different lengths, scanned layers, sampling reproducible from a seed."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax_lm.errors import UserError  # noqa: E402
from flax_lm.generation import GenerationConfig, Seq2SeqDecoder, generate, growing  # noqa: E402
from flax_lm.interop import t5 as interop  # noqa: E402
from flax_lm.models import t5  # noqa: E402

# A larger-than-default init (initializer_factor) makes the random model's choices decisive: no
# near-ties that float32 rounding in torch and XLA could order differently. transformers 5 decodes
# only models with as many decoder layers as encoder layers (its cache is sized by num_layers).
HF_TINY = dict(vocab_size=99, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
               initializer_factor=3.0, decoder_start_token_id=0)
SOURCES = [[5, 17, 33, 2, 60, 7, 8, 1], [40, 41, 1], [9, 3, 71, 12, 1], [66, 1], [23, 50, 4, 88, 1]]
ENDS = (1, 44, 70)   # end tokens the random model makes at several lengths
N = 12


@pytest.fixture(scope="module")
def models():
    """{"plain" | "scanned": (our model, its parameters)} and the transformers model, same weights."""
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_TINY)).eval()
    values = interop.config_from_hf(hf.config.to_dict())
    values.pop("family")
    state_dict = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    ours = {}
    for name, scan in (("plain", False), ("scanned", True)):
        cfg = t5.T5Config(**values, scan_layers=scan)
        ours[name] = (t5.T5ForConditionalGeneration(cfg), interop.params_from_hf(state_dict, cfg))
    return ours, hf


def _transformers_new_tokens(hf, sources, config: GenerationConfig):
    """HF's new tokens per returned sequence (sources right-padded with their attention mask, as
    T5 tokenizers pad), each row cut after its first end token as `generate` cuts ours."""
    width = max(map(len, sources))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sources])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources])
    with torch.no_grad():
        out = hf.generate(
            ids, attention_mask=mask, do_sample=False, num_beams=config.num_beams, max_new_tokens=config.max_new_tokens,
            length_penalty=config.length_penalty, early_stopping=config.early_stopping,
            num_return_sequences=config.num_return_sequences, repetition_penalty=config.repetition_penalty,
            eos_token_id=list(config.eos_token_ids), pad_token_id=0, decoder_start_token_id=0)
    rows = []
    for row in out[:, 1:].tolist():   # after the decoder start token
        ends = [i for i, token in enumerate(row) if token in config.eos_token_ids]
        rows.append(row[:ends[0] + 1] if ends else row)
    return rows


CASES = {
    "greedy": dict(),
    "beams": dict(num_beams=3, num_return_sequences=2, length_penalty=0.8),
    "beams-early": dict(num_beams=4, early_stopping=True, length_penalty=1.5),
    "beams-repetition": dict(num_beams=3, repetition_penalty=1.4),
    "greedy-repetition": dict(repetition_penalty=1.4),
}


# the scanned layout decodes through its unrolled twin: greedy and beams cover it
@pytest.mark.parametrize("name,case", [("plain", case) for case in CASES] + [("scanned", "greedy"),
                                                                             ("scanned", "beams")])
def test_generation_equals_transformers(models, name, case):
    ours, hf = models
    model, params = ours[name]
    config = GenerationConfig(max_new_tokens=N, eos_token_ids=ENDS, pad_token_id=0, **CASES[case])
    out = generate(Seq2SeqDecoder(model), params, SOURCES, config)
    assert out == _transformers_new_tokens(hf, SOURCES, config)
    assert any(row[-1] in ENDS and len(row) < N for row in out) or case.startswith("beams")


@pytest.mark.parametrize("case", ["greedy", "beams"])
def test_a_growing_self_attention_cache_generates_what_transformers_does(models, phased_cache, case):
    """The decoder's cache in four phases (2, 4, 7 and 13 slots after the start token), the
    cross-attention cache as it was."""
    ours, hf = models
    model, params = ours["plain"]
    config = GenerationConfig(max_new_tokens=N, eos_token_ids=ENDS, pad_token_id=0, **CASES[case])
    assert growing.lengths(1, N, cache_share=0.0) == [2, 4, 7, 13]
    assert generate(Seq2SeqDecoder(model), params, SOURCES, config) == _transformers_new_tokens(hf, SOURCES, config)


def test_weights_prepared_once_generate_what_transformers_does(models):
    ours, hf = models
    model, params = ours["scanned"]
    decoder = Seq2SeqDecoder(model)
    config = GenerationConfig(max_new_tokens=N, eos_token_ids=ENDS, pad_token_id=0, **CASES["beams"])
    prepared = decoder.prepared(params)
    assert generate(decoder, prepared, SOURCES, config) == _transformers_new_tokens(hf, SOURCES, config)


def test_ends_at_several_lengths(models):
    """The cases above are only a test of ending if the model does end, at different steps."""
    ours, _ = models
    model, params = ours["plain"]
    out = generate(Seq2SeqDecoder(model), params, SOURCES,
                   GenerationConfig(max_new_tokens=N, eos_token_ids=ENDS, pad_token_id=0, num_beams=3,
                                    num_return_sequences=3))
    assert len({len(row) for row in out if row[-1] in ENDS}) >= 2


def test_sampling_is_reproducible(models):
    ours, _ = models
    model, params = ours["plain"]
    config = GenerationConfig(max_new_tokens=N, temperature=1.2, top_k=5, seed=3, eos_token_ids=(1,), pad_token_id=0,
                              num_return_sequences=2)
    first = generate(Seq2SeqDecoder(model), params, SOURCES, config)
    assert first == generate(Seq2SeqDecoder(model), params, SOURCES, config)
    assert first != generate(Seq2SeqDecoder(model), params, SOURCES, dataclasses.replace(config, seed=4))


def test_an_input_longer_than_the_model_takes_is_one_line(models):
    ours, _ = models
    model, params = ours["plain"]
    too_long = [[5] * (model.cfg.max_len + 1)]
    with pytest.raises(UserError, match=f"an input has {model.cfg.max_len + 1} tokens"):
        generate(Seq2SeqDecoder(model), params, too_long, GenerationConfig(max_new_tokens=4))
