"""T5 module and its Hugging Face mapping: exact logits both ways, exact round trips, cached decoding."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm.errors import UserError
from flax_lm.interop import t5 as interop
from flax_lm.models import t5
from flax_lm.models.t5 import T5Config, T5ForConditionalGeneration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_TINY = dict(vocab_size=99, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=3,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)
# T5 (ReLU, tied and rescaled output) and T5 v1.1 (gated GELU, its own lm_head)
VARIANTS = {"relu_tied": dict(feed_forward_proj="relu"),
            "gated_untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}
# An untied head with HF's init (std 1) makes logits of ~16, where fp32 rounding alone moves them
# by 1e-5 (transformers' own eager and SDPA attention differ by 9e-6); this std keeps them at the
# tied model's scale.
_HEAD_STD = HF_TINY["d_model"] ** -0.5
# Sources and targets longer than max_distance, so the last logarithmic bucket is exercised.
B, S, T = 3, 23, 21


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf(request):
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_TINY, **VARIANTS[request.param]))
    if request.param == "gated_untied":  # transformers 5 ties lm_head at init whatever the config says
        model.lm_head.weight = torch.nn.Parameter(torch.randn(HF_TINY["vocab_size"], HF_TINY["d_model"]) * _HEAD_STD)
    return model.eval()


def _cfg(hf_model, **overrides) -> T5Config:
    values = interop.config_from_hf(hf_model.config.to_dict())
    values.pop("family")
    return T5Config(**{**values, **overrides})


def _state_dict(hf_model) -> dict:
    return {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}


def _inputs(vocab_size=HF_TINY["vocab_size"]):
    rng = np.random.RandomState(0)
    ids = rng.randint(2, vocab_size, (B, S))
    mask = np.ones((B, S), np.int32)
    mask[1, 15:] = 0  # right padding
    mask[2, :4] = 0   # left padding (T5 has no absolute positions)
    decoder_ids = np.concatenate([np.zeros((B, 1), int), rng.randint(2, vocab_size, (B, T - 1))], axis=1)
    return ids, mask, decoder_ids


def _hf_logits(hf_model, ids, mask, decoder_ids):
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()


@pytest.mark.parametrize("scan_layers", [False, True])
def test_imported_weights_give_the_logits_of_transformers(hf, scan_layers):
    cfg = _cfg(hf, scan_layers=scan_layers)
    params = interop.params_from_hf(_state_dict(hf), cfg)
    ids, mask, decoder_ids = _inputs()
    model = T5ForConditionalGeneration(cfg)
    ours = np.asarray(model.apply({"params": params}, ids, decoder_ids, attention_mask_BxS=mask))
    ref = _hf_logits(hf, ids, mask, decoder_ids)
    print(f"HF -> flax_lm ({'scanned' if scan_layers else 'unscanned'}): max abs diff {np.abs(ours - ref).max():.2e}")
    assert np.abs(ours - ref).max() <= 1e-5
    hidden_BxTxD, embedding_VxD = model.apply({"params": params}, ids, decoder_ids, attention_mask_BxS=mask,
                                              return_hidden=True)
    np.testing.assert_allclose(np.asarray(hidden_BxTxD @ embedding_VxD.T), ours, atol=1e-5)


def test_exported_weights_give_the_logits_of_flax_lm_in_transformers(hf, tmp_path):
    """A random flax_lm init, exported: as a state dict (tied) or a saved directory that
    `from_pretrained` loads with the exporter's config.json (untied)."""
    cfg = _cfg(hf)
    model = T5ForConditionalGeneration(cfg)
    ids, mask, decoder_ids = _inputs()
    params = nn.unbox(model.init(jax.random.PRNGKey(1), ids[:1, :4], decoder_ids[:1, :4])["params"])
    if not cfg.tie_word_embeddings:
        params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * _HEAD_STD
    tensors = interop.params_to_hf(params, cfg)
    if cfg.tie_word_embeddings:
        target = transformers.T5ForConditionalGeneration(transformers.T5Config(**interop.config_to_hf(cfg))).eval()
        result = target.load_state_dict({k: torch.tensor(v) for k, v in tensors.items()}, strict=False)
        assert not result.unexpected_keys
        assert set(result.missing_keys) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                            "lm_head.weight"}  # aliases of shared.weight
    else:
        import safetensors.numpy
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                    str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / "config.json").write_text(json.dumps(
            {"architectures": [interop.architecture(cfg, "seq2seq")], "model_type": "t5",
             **interop.config_to_hf(cfg)}))
        target = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
        assert not target.config.scale_decoder_outputs
        assert target.lm_head.weight.data_ptr() != target.shared.weight.data_ptr()
    ours = np.asarray(model.apply({"params": params}, ids, decoder_ids, attention_mask_BxS=mask))
    ref = _hf_logits(target, ids, mask, decoder_ids)
    print(f"flax_lm -> HF: max abs diff {np.abs(ours - ref).max():.2e}")
    assert np.abs(ours - ref).max() <= 1e-5


def test_round_trip_is_bit_identical_and_writes_what_save_pretrained_writes(hf, tmp_path):
    original = _state_dict(hf)
    for scan_layers in (False, True):
        cfg = _cfg(hf, scan_layers=scan_layers)
        back = interop.params_to_hf(interop.params_from_hf(original, cfg), cfg)
        for name, tensor in back.items():
            assert tensor.dtype == original[name].dtype and np.array_equal(tensor, original[name]), name
    hf.save_pretrained(tmp_path)
    import safetensors.numpy
    assert set(back) == set(safetensors.numpy.load_file(str(tmp_path / "model.safetensors")))
    config = json.loads((tmp_path / "config.json").read_text())
    assert interop.config_from_hf(config) == {**interop.config_from_hf(hf.config.to_dict()), "max_len": 512}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_gives_the_teacher_forced_logits(hf, scan_layers):
    """Prefill a chunk of 5 target tokens, then one token at a time: every step's logits equal
    full teacher-forced decoding. A scanned model decodes through its unrolled twin."""
    cfg = _cfg(hf, scan_layers=scan_layers)
    params = interop.params_from_hf(_state_dict(hf), cfg)
    ids, mask, decoder_ids = _inputs()
    model = T5ForConditionalGeneration(cfg)
    full = np.asarray(model.apply({"params": params}, ids, decoder_ids, attention_mask_BxS=mask))
    unrolled = T5ForConditionalGeneration(t5.unrolled(cfg))

    @jax.jit
    def start(params):
        prepared = t5.unstack_params(params, cfg) if cfg.scan_layers else params
        encoded = unrolled.apply({"params": prepared}, ids, mask, method="encode")
        return prepared, unrolled.apply({"params": prepared}, encoded, method="cross_cache")

    @functools.partial(jax.jit, static_argnames="keep")
    def step(prepared, cross, cache, ids_BxT, index, keep=0):
        slots_BxS = np.ones((B, T), np.int32)  # every slot may be attended (causality still applies)
        return unrolled.apply({"params": prepared}, ids_BxT, attention_mask_BxS=mask,
                              decoder_attention_mask_BxT=slots_BxS, cache=cache, cross_cache=cross,
                              cache_index=index, logits_to_keep=keep, method="decode")

    prepared, cross = start(params)
    assert isinstance(cross, tuple) and cross[0]["k"].shape == (B * cfg.n_heads, S, cfg.head_dim)
    cache = t5.init_cache(cfg, B, T)
    last_two, _ = step(prepared, cross, cache, decoder_ids[:, :5], jnp.int32(0), keep=2)
    logits, cache = step(prepared, cross, cache, decoder_ids[:, :5], jnp.int32(0))
    worst = max(np.abs(np.asarray(logits) - full[:, :5]).max(), np.abs(np.asarray(last_two) - full[:, 3:5]).max())
    for t in range(5, T):
        logits, cache = step(prepared, cross, cache, decoder_ids[:, t:t + 1], jnp.int32(t))
        worst = max(worst, np.abs(np.asarray(logits[:, 0]) - full[:, t]).max())
    print(f"cached vs teacher-forced: max abs diff {worst:.2e}")
    assert worst <= 1e-5


def test_attention_implementations_and_dropout_under_scan_and_remat():
    """The reference and XLA attention give the explicit one's logits; a scanned, rematerialised
    model trains with dropout (the relative-position tables get gradients)."""
    values = {k: v for k, v in interop.config_from_hf({**HF_TINY, **VARIANTS["gated_untied"]}).items()
              if k != "family"}
    cfg = T5Config(**values)
    ids, mask, decoder_ids = _inputs()
    params = nn.unbox(T5ForConditionalGeneration(cfg).init(jax.random.PRNGKey(2), ids[:1, :4], decoder_ids[:1, :4])
                      ["params"])
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * _HEAD_STD
    logits = {impl: np.asarray(T5ForConditionalGeneration(dataclasses.replace(cfg, attention=impl)).apply(
        {"params": params}, ids, decoder_ids, attention_mask_BxS=mask)) for impl in ("explicit", "reference", "xla")}
    np.testing.assert_allclose(logits["reference"], logits["explicit"], atol=1e-5)
    np.testing.assert_allclose(logits["xla"], logits["explicit"], atol=1e-5)

    train_cfg = dataclasses.replace(cfg, scan_layers=True, remat_policy="full", dropout=0.1)
    scanned = interop.params_from_hf(interop.params_to_hf(params, cfg), train_cfg)

    @jax.jit
    def grads(params, rng):
        def loss(params):
            out = T5ForConditionalGeneration(train_cfg).apply(
                {"params": params}, ids, decoder_ids, attention_mask_BxS=mask, deterministic=False,
                rngs={"dropout": rng})
            return jnp.mean(jax.nn.log_softmax(out)[..., 0])
        return jax.grad(loss)(params)

    g = grads(scanned, jax.random.PRNGKey(0))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    assert np.abs(g["decoder"]["relative_attention_bias"]).max() > 0
    assert np.abs(g["encoder"]["relative_attention_bias"]).max() > 0
    assert not np.array_equal(g["encoder"]["block"]["mlp"]["wo"]["kernel"],
                              grads(scanned, jax.random.PRNGKey(1))["encoder"]["block"]["mlp"]["wo"]["kernel"])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_parameter_has_logical_axes_and_the_count_is_num_params(scan_layers):
    for variant in VARIANTS.values():
        values = {k: v for k, v in interop.config_from_hf({**HF_TINY, **variant}).items() if k != "family"}
        cfg = T5Config(**values, scan_layers=scan_layers)
        boxed = jax.eval_shape(T5ForConditionalGeneration(cfg).init, jax.random.PRNGKey(0),
                               jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32))["params"]
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
        assert sum(int(np.prod(x.value.shape)) for x in leaves) == t5.num_params(cfg)
        assert t5.flops_per_token(cfg, 64) > 6 * t5.num_params(cfg) - 6 * cfg.vocab_size * cfg.d_model


def test_a_missing_or_misshapen_tensor_is_named(hf):
    cfg = _cfg(hf)
    state_dict = _state_dict(hf)
    missing = {k: v for k, v in state_dict.items() if k != "decoder.block.2.layer.1.EncDecAttention.k.weight"}
    with pytest.raises(UserError, match="no tensor 'decoder.block.2.layer.1.EncDecAttention.k.weight'"):
        interop.params_from_hf(missing, cfg)
    name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    with pytest.raises(UserError, match=f"tensor '{name}' has shape \\(9, 4\\)"):
        interop.params_from_hf({**state_dict, name: np.zeros((9, 4), np.float32)}, cfg)


def test_unsupported_configs_are_refused_naming_the_key():
    with pytest.raises(UserError, match="feed_forward_proj='gated-silu' is not supported"):
        interop.config_from_hf({**HF_TINY, "feed_forward_proj": "gated-silu"})
    with pytest.raises(UserError, match="no 'd_model'"):
        interop.config_from_hf({k: v for k, v in HF_TINY.items() if k != "d_model"})
