"""The Llama-style decoder: logits equal `transformers.LlamaForCausalLM`, exact import/export,
greedy and beam search equal to `generate()`, training, packed documents kept
apart, and one-line errors. Cached decoding is tested with GPT-2's, in test_generation."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from decoder_parity import assert_generate_equals_transformers, cut_after, left_padded  # noqa: E402
from test_interop import _cli, _tokenizer_json  # noqa: E402

from flax_lm.config import load as config_lib  # noqa: E402
from flax_lm.workdir import run as run_lib  # noqa: E402
from flax_lm.training import train  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.interop import llama as llama_interop  # noqa: E402
from flax_lm.interop.export import export  # noqa: E402
from flax_lm.interop.hf_import import import_hf  # noqa: E402
from flax_lm.models import llama  # noqa: E402

HF_TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=500.0, bos_token_id=0, eos_token_id=0)


def _hf_model(n_kv_heads=2, tie=False, **overrides):
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**{**HF_TINY, "num_key_value_heads": n_kv_heads,
                                            "tie_word_embeddings": tie, **overrides})
    return transformers.LlamaForCausalLM(hf_config).eval()


def _ours(hf, scan_layers=False):
    """(our model, its parameters) with `hf`'s config and weights."""
    fields = llama_interop.config_from_hf(hf.config.to_dict())
    cfg = llama.LlamaConfig(**{k: v for k, v in fields.items() if k != "family"}, scan_layers=scan_layers)
    params = llama_interop.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg)
    return llama.LlamaForCausalLM(cfg), params


@pytest.mark.parametrize("n_kv_heads, tie, scan_layers", [
    (2, False, False), (4, False, False), (1, True, False), (2, True, True), (4, False, True)],
    ids=["gqa-untied", "mha-untied", "mqa-tied", "gqa-tied-scanned", "mha-untied-scanned"])
def test_logits_equal_transformers_with_left_padding(n_kv_heads, tie, scan_layers):
    hf = _hf_model(n_kv_heads, tie)
    model, params = _ours(hf, scan_layers)
    rows = np.random.default_rng(0).integers(1, 97, (3, 11)).tolist()
    ids, mask, positions = left_padded([rows[0], rows[1][:7], rows[2][:4]])
    ours = np.asarray(model.apply({"params": params}, ids, attention_mask_BxT=mask, position_ids_BxT=positions))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()
    real = mask.astype(bool)  # a padded query's output is not defined the same way on both sides
    assert np.abs(ours - ref)[real].max() <= 1e-5
    # and without a mask, positions 0..T-1 by default
    ours = np.asarray(model.apply({"params": params}, ids))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("scan_layers", [False, True])
def test_scanned_and_unscanned_layouts_map_back_exactly(scan_layers):
    hf = _hf_model()
    model, params = _ours(hf, scan_layers)
    back = llama_interop.params_to_hf(params, model.cfg)
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(back[name], tensor.numpy(), err_msg=name)


@pytest.fixture
def hf_dir(tmp_path, request):
    hf = _hf_model(2, tie=getattr(request, "param", False))
    out = tmp_path / "hf"
    hf.save_pretrained(out)
    _tokenizer_json(out / "tokenizer.json", vocab_size=97)
    return out, hf


@pytest.mark.parametrize("hf_dir", [False, True], ids=["untied", "tied"], indirect=True)
def test_import_then_export_is_bit_identical_and_loads_in_transformers(tmp_path, hf_dir):
    src, hf = hf_dir
    import_hf(str(src), tmp_path / "work")
    run, state = run_lib.load_run(tmp_path / "work")
    run.checkpointer.close()
    assert run.cfg.model.family == "llama" and run.cfg.model.n_kv_heads == 2
    ids = np.random.default_rng(1).integers(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(run.model.apply({"params": state.params}, ids)) - ref).max() <= 1e-5
    out = export(tmp_path / "work", tmp_path / "back")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is transformers.LlamaForCausalLM
    original = hf.state_dict()
    assert reloaded.state_dict().keys() == original.keys()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    for key in ("num_key_value_heads", "rms_norm_eps", "intermediate_size", "tie_word_embeddings", "head_dim"):
        assert getattr(reloaded.config, key) == getattr(hf.config, key), key
    assert reloaded.config.rope_parameters["rope_theta"] == 500.0


@pytest.fixture(scope="module")
def decisive():
    """HF's model and ours with the same weights; a larger-than-default init makes the random
    model's next-token choices decisive, not near-ties that float32 rounding could flip."""
    hf = _hf_model(2, tie=False, initializer_range=0.2)
    return hf, _ours(hf), _ours(hf, scan_layers=True)


@pytest.mark.parametrize("layout", ["unscanned", "scanned"])
def test_greedy_and_beam_search_equal_transformers_generate(decisive, layout):
    hf, unscanned, scanned = decisive
    model, params = unscanned if layout == "unscanned" else scanned
    assert_generate_equals_transformers(hf, model, params)


@pytest.mark.parametrize("attention", ["explicit", "xla", "reference"])
def test_packed_documents_do_not_see_each_other(attention):
    """Segment ids and positions that restart per document (data.packing=segments): a token's
    logits do not change when another document in its row changes."""
    cfg = llama.LlamaConfig(vocab_size=97, max_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                            attention=attention)
    model = llama.LlamaForCausalLM(cfg)
    segments = np.array([[1] * 5 + [2] * 7 + [3] * 4])
    positions = np.concatenate([np.arange(5), np.arange(7), np.arange(4)])[None]
    ids = np.random.default_rng(2).integers(0, 97, (1, 16))
    params = model.init(jax.random.PRNGKey(0), ids)["params"]

    def logits(ids):
        return np.asarray(model.apply({"params": params}, ids, segment_ids_BxT=segments, position_ids_BxT=positions))

    before = logits(ids)
    changed = ids.copy()
    changed[0, 5:12] = (changed[0, 5:12] + 1) % 97  # the middle document
    after = logits(changed)
    np.testing.assert_array_equal(after[0, :5], before[0, :5])
    np.testing.assert_array_equal(after[0, 12:], before[0, 12:])
    assert not np.allclose(after[0, 5:12], before[0, 5:12])
    # a document packed after others reads as it does alone at the start of a row
    alone = np.asarray(model.apply({"params": params}, ids[:, 12:]))
    np.testing.assert_allclose(before[0, 12:], alone[0], atol=1e-5)


def test_llama_tiny_trains_packed_exports_and_transformers_generates_the_same(tmp_path):
    cfg = config_lib.load("llama_tiny", [
        "--config.model.vocab_size=512", "--config.model.max_len=32", "--config.data.max_bytes=60000",
        "--config.data.packing=segments", "--config.train.steps=12", "--config.train.batch_size=16",
        "--config.train.log_every=1", "--config.train.eval_every=12", "--config.train.eval_batches=1",
        "--config.train.progress_bar=false", "--config.optim.warmup_steps=2"])
    train.train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    out = export(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    run, state = run_lib.load_run(tmp_path / "run")
    run.checkpointer.close()
    prompt = run.tokenizer.encode("def ").ids
    assert tok("def ").input_ids == prompt
    ours = run_lib.generate_ids(run, state.params, [prompt], max_new_tokens=10, temperature=0.0)[0]
    with torch.no_grad():  # the exported generation_config.json gives the end-of-text id as eos and padding
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):].tolist()
    assert ours == cut_after(ref, hf.generation_config.eos_token_id)


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.n_kv_heads=3"], "model.n_heads (4) must be divisible by model.n_kv_heads (3)"),
    (["--config.model.d_model=36", "--config.model.n_heads=4", "--config.model.n_kv_heads=0"],
     "(9: model.head_dim, or model.d_model / model.n_heads) must be even"),
    (["--config.model.family=gpt2", "--config.task=span_corruption"], "needs model.family=t5"),
])
def test_bad_configs_are_one_line(overrides, message):
    with pytest.raises(UserError) as error:
        config_lib.load("llama_tiny", overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling ('linear') is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "RoPE scaling ('llama3') is not supported"),
    ({"attention_bias": True}, "attention_bias=True is not supported"),
    ({"mlp_bias": True}, "mlp_bias=True is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
])
def test_unsupported_hf_configs_are_refused(change, message):
    hf_config = {**_hf_model().config.to_dict(), **change}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        llama_interop.config_from_hf(hf_config)


def test_importing_rope_scaling_is_one_line_on_the_command_line(tmp_path, hf_dir):
    src, _ = hf_dir
    config = json.loads((src / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    (src / "config.json").write_text(json.dumps(config))
    result = _cli("import", "--hf", str(src), "--workdir", str(tmp_path / "w"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "RoPE scaling ('linear') is not supported" in lines[0]


def test_parameter_count_and_flops_formula():
    cfg = llama.LlamaConfig.from_config(config_lib.load("llama_small").model)
    model = llama.LlamaForCausalLM(dataclasses.replace(cfg, dtype="float32"))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
    assert sum(int(np.prod(x.value.shape)) for x in jax.tree.leaves(
        shapes, is_leaf=lambda x: hasattr(x, "value"))) == llama.num_params(cfg)
    assert round(llama.num_params(cfg) / 1e6) == 125
    embedding = cfg.vocab_size * cfg.d_model  # the untied input lookup does no matmul
    assert llama.flops_per_token(cfg, 1024) == 6 * (llama.num_params(cfg) - embedding) + 12 * 12 * 12 * 64 * 1024
