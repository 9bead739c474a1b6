"""Generation: the key/value cache, logits processing, greedy decoding equal to transformers,
reproducible sampling, and the one-line errors of `flax-lm generate`."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_beam_search import CountingDecoder  # noqa: E402
from test_cli import flax_lm  # noqa: E402

from flax_lm.config import load as config_lib  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.generation import (  # noqa: E402
    CausalDecoder,
    GenerationConfig,
    Prepared,
    generate,
    growing,
    processors,
    settings,
)
from flax_lm.generation import decoder as decoder_module  # noqa: E402
from flax_lm.interop import gpt2 as gpt2_interop  # noqa: E402
from flax_lm.models import build_model, family_module, gpt2, llama  # noqa: E402
from flax_lm.models.layers import grown_cache, write_cache  # noqa: E402

# Larger-than-default init so the random model's next-token choices are decisive, not near-ties.
HF_TINY = dict(vocab_size=96, n_positions=48, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3,
               bos_token_id=0, eos_token_id=0)
PROMPTS = [[5, 17, 33, 2, 60, 7, 8], [40, 41], [9, 3, 71, 12]]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_TINY)).eval()
    fields = gpt2_interop.config_from_hf(hf.config.to_dict())
    cfg = gpt2.GPT2Config(**{k: v for k, v in fields.items() if k != "family"})
    params = gpt2_interop.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg)
    return hf, gpt2.GPT2LMHeadModel(cfg), params


# the decoder-only families, tiny: (config, model) for a scan_layers setting
DECODERS = {
    "gpt2": lambda scan: gpt2.GPT2Config(vocab_size=97, max_len=32, d_model=32, n_layers=3, n_heads=4, d_ff=64,
                                         scan_layers=scan),
    "llama": lambda scan: llama.LlamaConfig(vocab_size=97, max_len=32, d_model=32, n_layers=3, n_heads=4,
                                            n_kv_heads=2, d_ff=48, scan_layers=scan),
}


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("family", sorted(DECODERS))
def test_cached_decoding_gives_the_full_forward_logits_at_every_step(family, scan_layers):
    cfg = DECODERS[family](scan_layers)
    module = family_module(cfg)
    model = {"gpt2": gpt2.GPT2LMHeadModel, "llama": llama.LlamaForCausalLM}[family](cfg)
    ids_BxT = np.random.default_rng(0).integers(0, 97, (2, 12)).astype(np.int32)
    params = model.init(jax.random.PRNGKey(0), ids_BxT)["params"]
    full_BxTxV = model.apply({"params": params}, ids_BxT)
    mask_BxS = jnp.ones((2, 16), bool)
    cache = module.init_cache(cfg, 2, 16)
    # (B*K) x S x H; Llama caches its K key/value heads, not the N query heads
    assert jax.tree.leaves(cache)[0].shape[-3:] == (2 * getattr(cfg, "n_kv_heads", cfg.n_heads), 16, 8)
    step = jax.jit(lambda ids, cache, index: model.apply(  # one compilation per width, the index traced
        {"params": params}, ids, attention_mask_BxT=mask_BxS, cache=cache, cache_index=index))
    logits, cache = step(ids_BxT[:, :5], cache, 0)
    np.testing.assert_allclose(logits, full_BxTxV[:, :5], atol=1e-5)
    for t in range(5, 12):
        logits, cache = step(ids_BxT[:, t:t + 1], cache, t)
        np.testing.assert_allclose(logits[:, 0], full_BxTxV[:, t], atol=1e-5)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_weights_prepared_once_decode_as_the_parameters_do(family):
    # scanned layers, so that preparing also splits the stacks
    cfg = DECODERS[family](True)
    model = {"gpt2": gpt2.GPT2LMHeadModel, "llama": llama.LlamaForCausalLM}[family](cfg)
    params = model.init(jax.random.PRNGKey(3), jnp.asarray([PROMPTS[0]]))["params"]
    decoder = CausalDecoder(model)
    prepared = decoder.prepared(params)
    assert isinstance(prepared, Prepared)
    assert decoder.prepare(prepared) is prepared.variables
    for config in (GenerationConfig(max_new_tokens=6), GenerationConfig(max_new_tokens=6, temperature=0.8, seed=2),
                   GenerationConfig(max_new_tokens=5, num_beams=3, num_return_sequences=2)):
        assert generate(decoder, prepared, PROMPTS, config) == generate(decoder, params, PROMPTS, config)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_logits_to_keep_gives_the_last_positions_logits(family):
    cfg = DECODERS[family](False)
    model = {"gpt2": gpt2.GPT2LMHeadModel, "llama": llama.LlamaForCausalLM}[family](cfg)
    ids_BxT = np.random.default_rng(2).integers(0, 97, (2, 7)).astype(np.int32)
    params = model.init(jax.random.PRNGKey(0), ids_BxT)["params"]
    full_BxTxV = model.apply({"params": params}, ids_BxT)
    last_Bx2xV = model.apply({"params": params}, ids_BxT, logits_to_keep=2)
    assert last_Bx2xV.shape == (2, 2, 97)
    np.testing.assert_allclose(last_Bx2xV, full_BxTxV[:, -2:], atol=1e-6)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_a_bfloat16_decoder_reads_weights_cast_once_and_computes_the_same_logits(family, monkeypatch):
    cfg = dataclasses.replace(DECODERS[family](True), dtype="bfloat16")
    model = {"gpt2": gpt2.GPT2LMHeadModel, "llama": llama.LlamaForCausalLM}[family](cfg)
    ids_BxT = np.random.default_rng(1).integers(0, 97, (2, 6)).astype(np.int32)
    params = model.init(jax.random.PRNGKey(0), ids_BxT)["params"]
    decoder = CausalDecoder(model)
    prepared = decoder.prepare(params)
    dtypes = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(prepared):  # by parameter name (boxed: before .value)
        dtypes.setdefault([k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1], set()).add(leaf.dtype)
    assert dtypes["kernel"] == dtypes["embedding"] == {jnp.dtype(jnp.bfloat16)}
    assert dtypes["scale"] == {jnp.dtype(jnp.float32)}  # norms stay float32

    def prefill(weights):
        return decoder.forward(weights, ids_BxT, jnp.ones((2, 8), bool), jnp.broadcast_to(jnp.arange(6), (2, 6)),
                               decoder.start(weights, None, 2, 8), 0)[0].astype(jnp.float32)

    monkeypatch.setattr(decoder_module, "_weights_in", lambda variables, dtype: variables)
    uncast = decoder.prepare(params)
    assert {leaf.dtype for leaf in jax.tree.leaves(uncast)} == {jnp.dtype(jnp.float32)}
    # the model casts float32 weights at each use to the same values
    np.testing.assert_array_equal(prefill(prepared), prefill(uncast))


def _hf_generate(hf, prompts, pad=0, **kwargs):
    """HF's new tokens per prompt (left-padded batch), cut after the first eos as ours are."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, pad_token_id=pad, **kwargs)[:, width:].tolist()
    eos = kwargs.get("eos_token_id")
    return [row[:row.index(eos) + 1] if eos is not None and eos in row else row for row in out]


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one", "batch"])
@pytest.mark.parametrize("eos", [None, "frequent"])
def test_greedy_equals_transformers_generate(models, prompts, eos):
    """The same tokens, from as many passes through the model: the prompt's, then one for each
    new token but the last (the loop stops when every row has ended)."""
    hf, model, params = models
    decoder = CountingDecoder(model)
    if eos == "frequent":  # a token greedy decoding actually makes, so that rows finish early
        eos = generate(decoder, params, prompts, GenerationConfig(max_new_tokens=12))[0][3]
        decoder.calls = 0
    ours = generate(decoder, params, prompts, GenerationConfig(
        max_new_tokens=12, eos_token_ids=() if eos is None else (eos,)))
    hf_calls = []
    hook = hf.register_forward_hook(lambda *_: hf_calls.append(1))
    try:
        ref = _hf_generate(hf, prompts, max_new_tokens=12, do_sample=False, eos_token_id=eos)
    finally:
        hook.remove()
    assert ours == ref
    assert decoder.calls == len(hf_calls)
    assert (len(hf_calls) < 12) == all(len(row) < 12 for row in ours)
    if eos is not None:
        assert any(len(row) < 12 for row in ours)


@pytest.mark.parametrize("beams", [1, 3])
def test_the_last_new_token_needs_no_room_in_the_context(models, beams):
    """A prompt as long as the context (48) gets one new token, one of 46 three (of five asked
    for): transformers' tokens, and the number it can make."""
    hf, model, params = models
    for length, made in ((48, 1), (46, 3)):
        prompt = [[(7 * i) % 96 for i in range(length)]]
        ours = generate(CausalDecoder(model), params, prompt, GenerationConfig(max_new_tokens=5, num_beams=beams))
        assert [len(row) for row in ours] == [made]
        assert ours == _hf_generate(hf, prompt, max_new_tokens=made, do_sample=False, num_beams=beams,
                                    eos_token_id=None)


def test_cache_phases_double_up_to_the_full_length_where_the_cache_outweighs_the_weights(monkeypatch):
    assert growing.lengths(32, 480, cache_share=2.4) == [128, 256, 512]
    assert growing.lengths(32, 480, cache_share=0.6) == [512]  # reading the weights dominates a step
    assert growing.lengths(32, 64, cache_share=2.4) == [96]    # no phase under SMALLEST
    assert growing.lengths(960, 64, cache_share=39) == [1024]  # half would not hold the prompt
    assert growing.lengths(200, 312, cache_share=2.4) == [256, 512]
    assert growing.lengths(10, 290, cache_share=2.4) == [150, 300]  # halves rounded up
    monkeypatch.setattr(growing, "SMALLEST", 1)
    assert growing.lengths(7, 24, cache_share=1.0) == [8, 16, 31]  # the first holds one new token


def test_a_bfloat16_cache_takes_new_entries_and_slots_in_its_own_dtype():
    cache = {name: jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 4)), jnp.bfloat16) for name in "kv"}
    k_BxTxKxH, v_BxTxKxH = (jnp.full((2, 1, 4, 4), x, jnp.float32) for x in (2.5, -3.0))
    written = jax.jit(write_cache)(cache, k_BxTxKxH, v_BxTxKxH, 3)
    for name, value in (("k", 2.5), ("v", -3.0)):
        expected = np.asarray(cache[name]).copy()
        expected[:, 3] = value
        np.testing.assert_array_equal(np.asarray(written[name]), expected)
        assert written[name].dtype == jnp.bfloat16
    (grown,) = jax.jit(grown_cache, static_argnums=1)((written,), 24)
    for name in "kv":
        np.testing.assert_array_equal(np.asarray(grown[name][:, :16]), np.asarray(written[name]))
        assert not np.asarray(grown[name][:, 16:]).any()


# 32 + 480 tokens: the last one needs no slot
@pytest.mark.parametrize("batch, phases", [(8, [511]), (16, [128, 256, 511])])
def test_gpt2_small_decodes_in_phases_from_batch_16_at_512_tokens(batch, phases):
    model = build_model(config_lib.load("gpt2_small", ["--config.model.dtype=bfloat16"]).model)  # shapes only
    decoder = CausalDecoder(model)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    prepared = jax.eval_shape(lambda params: decoder.prepare(params), params)
    assert growing.phases(decoder, prepared, batch, 32, 480) == phases


def test_a_growing_cache_generates_what_transformers_does(models, phased_cache):
    """Greedy decoding and beam search in three phases (caches of 8, 15 and 30 slots; the first
    makes one token): the tokens of one static cache, which are transformers'."""
    hf, model, params = models
    decoder = CausalDecoder(model)
    config = GenerationConfig(max_new_tokens=24)
    assert generate(decoder, params, PROMPTS, config) == _hf_generate(hf, PROMPTS, max_new_tokens=24,
                                                                      do_sample=False, eos_token_id=None)
    beams = dataclasses.replace(config, num_beams=3, num_return_sequences=2)
    ours = generate(decoder, params, PROMPTS, beams)
    assert ours == _hf_generate(hf, PROMPTS, max_new_tokens=24, do_sample=False, eos_token_id=None, num_beams=3,
                                num_return_sequences=2)


def test_sampling_with_a_growing_cache_makes_the_tokens_of_a_static_one(models, request):
    _, model, params = models
    decoder = CausalDecoder(model)
    config = GenerationConfig(max_new_tokens=24, temperature=0.9, top_k=20, seed=3)
    static = generate(decoder, params, PROMPTS, config)
    request.getfixturevalue("phased_cache")  # from here on: phases of 8, 15 and 30 slots
    assert generate(decoder, params, PROMPTS, config) == static


def test_repetition_penalty_greedy_equals_transformers(models):
    """The padding id is a token the short prompt's row makes: penalising it as if the padding
    were text (transformers leaves padding out) would change that row."""
    hf, model, params = models
    plain = generate(CausalDecoder(model), params, PROMPTS, GenerationConfig(max_new_tokens=10))
    pad = plain[1][0]
    ours = generate(CausalDecoder(model), params, PROMPTS, GenerationConfig(
        max_new_tokens=10, repetition_penalty=1.8, pad_token_id=pad))
    assert ours == _hf_generate(hf, PROMPTS, pad=pad, max_new_tokens=10, do_sample=False, repetition_penalty=1.8,
                                eos_token_id=None)
    assert ours != plain


def test_filters_keep_exactly_the_tokens_they_should():
    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.3, 0.3, 0.3, 0.05]])
    scores = jnp.log(jnp.asarray(probs))
    kept = lambda s: np.isfinite(np.asarray(s))  # noqa: E731
    np.testing.assert_array_equal(kept(processors.top_k(scores, 2)),
                                  [[1, 1, 0, 0, 0], [0, 1, 1, 1, 0]])  # ties with the 2nd stay
    # 0.5 + 0.2 = 0.7 reaches 0.7; the second row needs 0.3 + 0.3 + 0.3
    np.testing.assert_array_equal(kept(processors.top_p(scores, 0.7)), [[1, 1, 0, 0, 0], [0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(kept(processors.top_p(scores, 0.01)), [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]])
    np.testing.assert_array_equal(kept(processors.min_p(scores, 0.3)), [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    penalised = processors.repetition_penalty(jnp.asarray([[2.0, -2.0, 1.0]]), jnp.asarray([[1, 1, 0]], bool), 2.0)
    np.testing.assert_allclose(penalised, [[1.0, -4.0, 1.0]])


def test_greedy_picks_what_argmax_picks_ties_nans_and_infinities_included():
    nan, inf = np.nan, np.inf
    hand = np.array([[1, 3, 3, 2], [nan, 1, nan, 5], [-inf] * 4, [0, -0.0, 0, -1], [1, inf, 2, inf], [2, 2, 2, 2]],
                    np.float32)
    wide = np.random.default_rng(0).normal(size=(33, 50257)).astype(np.float32)
    wide[5, [7, 40000]] = 9.0  # a tie far apart
    for scores in (hand, wide):
        picked = jax.jit(processors.greedy)(jnp.asarray(scores))
        assert picked.dtype == jnp.int32
        np.testing.assert_array_equal(picked, np.argmax(scores, axis=-1))
    assert jax.jit(processors.greedy)(jnp.asarray(wide))[5] == 7


def test_warpers_match_transformers_on_random_scores():
    from transformers.generation import logits_process as lp
    scores = np.random.default_rng(1).normal(size=(4, 50)).astype(np.float32) * 3
    ours = processors.warp(jnp.asarray(scores), temperature=0.7, k=20, p=0.8, minimum_p=0.05)
    ref = torch.tensor(scores)
    for warper in (lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(20), lp.TopPLogitsWarper(0.8),
                   lp.MinPLogitsWarper(0.05)):
        ref = warper(None, ref)
    np.testing.assert_array_equal(np.isfinite(ours), torch.isfinite(ref).numpy())
    np.testing.assert_allclose(np.where(np.isfinite(ours), ours, 0), torch.where(ref.isfinite(), ref, 0), rtol=1e-6)


def test_sampling_is_reproducible_and_stays_in_the_top_k(models):
    _, model, params = models
    decoder = CausalDecoder(model)
    config = GenerationConfig(max_new_tokens=16, temperature=1.5, top_k=3, seed=7, num_return_sequences=2)
    first = generate(decoder, params, PROMPTS, config)
    assert len(first) == 6 and first == generate(decoder, params, PROMPTS, config)
    assert first != generate(decoder, params, PROMPTS, GenerationConfig(**{**config.__dict__, "seed": 8}))
    assert first[0] != first[1]  # the two samples of one prompt differ
    # every sampled token is among the 3 most likely after its prefix
    for prompt, row in zip([p for p in PROMPTS for _ in range(2)], first):
        logits = model.apply({"params": params}, jnp.asarray([prompt + row]))[0]
        for t, token in enumerate(row):
            top3 = np.argsort(np.asarray(logits[len(prompt) + t - 1]))[-3:]
            assert token in top3


@pytest.mark.parametrize("phased", [False, True], ids=["static", "growing"])
def test_sharded_decoding_equals_one_device(models, phased, request):
    """Parameters tensor-parallel over 2 devices, the batch over 4 (the tests' 8 CPU devices);
    "growing": the cache sharded as it grows, in two phases of 8 and 15 slots (`growing`)."""
    from flax_lm.config import defaults
    from flax_lm.parallel import mesh, sharding
    if phased:
        request.getfixturevalue("phased_cache")
    _, model, params = models
    cfg = defaults.get_config()
    cfg.parallel.update(data=4, fsdp=1, tensor=2)
    cfg.model.n_heads = model.cfg.n_heads
    cfg.train.batch_size = 4
    devices = mesh.make_mesh(cfg, jax.devices()[:8])
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
    sharded = jax.device_put(params, sharding.logical_sharding(boxed, devices))
    assert sharded["h_0"]["attn"]["c_attn"]["kernel"].sharding.spec[2] == "tensor"
    prompts = PROMPTS + [[1, 2, 3]]
    config = GenerationConfig(max_new_tokens=8, num_beams=2)
    with sharding.activate(devices):
        greedy = generate(CausalDecoder(model), sharded, prompts, GenerationConfig(max_new_tokens=8))
        beams = generate(CausalDecoder(model), sharded, prompts, config)
    assert greedy == generate(CausalDecoder(model), params, prompts, GenerationConfig(max_new_tokens=8))
    assert beams == generate(CausalDecoder(model), params, prompts, config)


@pytest.mark.parametrize("prompts, config, message", [
    ([[1, 2], []], GenerationConfig(), "a prompt is empty"),
    ([[1, 2], [95, 96]], GenerationConfig(), "a prompt has a token id outside the model's vocabulary (0 to 95)"),
    ([[-1]], GenerationConfig(), "outside the model's vocabulary"),
    ([list(range(49))], GenerationConfig(), "no room to generate"),
    ([[1]], GenerationConfig(top_p=0.0), "top_p must be in (0, 1]"),
    ([[1]], GenerationConfig(num_beams=0), "num_beams must be at least 1"),
])
def test_bad_requests_are_user_errors(models, prompts, config, message):
    _, model, params = models
    with pytest.raises(UserError, match=re.escape(message)):
        generate(CausalDecoder(model), params, prompts, config)


def test_generate_command_streams_batches_and_refuses_bad_input(tmp_path):
    from test_interop import _tokenizer_json
    src = tmp_path / "hf"
    torch.manual_seed(0)  # a vocabulary that holds the tokenizer's 256 bytes and merges
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**HF_TINY, "vocab_size": 300})).save_pretrained(src)
    _tokenizer_json(src / "tokenizer.json", vocab_size=300)
    work = str(tmp_path / "work")
    assert flax_lm("import", "--hf", str(src), "--workdir", work).returncode == 0
    one = flax_lm("generate", "--workdir", work, "--prompt", "def f", "--max-new-tokens", "6", "--temperature", "0")
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("def f")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f\nimport os\n")
    batch = flax_lm("generate", "--workdir", work, "--input", str(prompts), "--max-new-tokens", "6",
                    "--temperature", "0")
    assert batch.returncode == 0, batch.stderr
    lines = batch.stdout.splitlines()
    assert lines[0].startswith("def f") and any(line.startswith("import os") for line in lines)
    beams = flax_lm("generate", "--workdir", work, "--prompt", "def f", "--max-new-tokens", "6", "--num-beams", "3",
                    "--num-return-sequences", "2", "--length-penalty", "0.5", "--early-stopping", "true")
    assert beams.returncode == 0, beams.stderr
    assert [line[:5] for line in beams.stdout.splitlines()] == ["def f", "def f"]
    for args, message in ((["--prompt", ""], "--prompt is empty"),
                          (["--prompt", "x", "--early-stopping", "maybe"], "early_stopping must be true, false or"),
                          (["--prompt", "x", "--stop-token-ids", "13;14"], "stop_token_ids must be comma-separated"),
                          (["--prompt", "x", "--top-p", "1.5"], "top_p must be in (0, 1]"),
                          (["--prompt", "x", "--num-beams", "0"], "num_beams must be at least 1"),
                          (["--prompt", "x " * 60], "no room to generate")):
        bad = flax_lm("generate", "--workdir", work, *args)
        assert bad.returncode == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_sample_section_maps_to_generation_settings():
    from flax_lm.config import defaults
    sample = defaults.get_config().sample.to_dict()
    sample.update(early_stopping="never", stop_token_ids="13, 198,5", length_penalty=0.5, num_beams=4)
    config = settings.from_sample_section(sample, eos_token_id=5, seed=3)
    assert (config.early_stopping, config.eos_token_ids, config.pad_token_id) == ("never", (5, 13, 198), 5)
    assert (config.length_penalty, config.num_beams, config.seed) == (0.5, 4, 3)
    with pytest.raises(UserError, match="stop_token_ids must be comma-separated"):
        settings.token_ids("13,²")  # str.isdigit() is true for "²"; int() refuses it
