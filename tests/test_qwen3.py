"""Qwen3 (the Llama option set plus per-head q/k RMSNorm): logits equal
`transformers.Qwen3ForCausalLM`, exact import/export, greedy and beam search equal to `generate()`,
the qwen3_tiny recipe trains, and what is not implemented is refused in one line."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_interop import _cli, _tokenizer_json  # noqa: E402
from decoder_parity import assert_generate_equals_transformers, cut_after, left_padded  # noqa: E402

from flax_lm.config import load as config_lib  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.interop import qwen3 as qwen3_interop  # noqa: E402
from flax_lm.interop.export import export  # noqa: E402
from flax_lm.interop.hf_import import import_hf  # noqa: E402
from flax_lm.models import qwen3  # noqa: E402
from flax_lm.training import train  # noqa: E402
from flax_lm.workdir import run as run_lib  # noqa: E402

# head_dim 12 with 4 heads on a 32-wide stream: q/o projections of 48, not d_model
HF_TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=12, max_position_embeddings=64, rms_norm_eps=1e-6,
               rope_parameters={"rope_type": "default", "rope_theta": 500.0}, bos_token_id=0, eos_token_id=0)


def _hf_model(tie=False, **overrides):
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **{**HF_TINY, "tie_word_embeddings": tie, **overrides})).eval()
    with torch.no_grad():  # norms (the q/k norms among them) start at ones: make them count
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def _ours(hf, scan_layers=False):
    fields = qwen3_interop.config_from_hf(hf.config.to_dict())
    cfg = qwen3.Qwen3Config(**{k: v for k, v in fields.items() if k != "family"}, scan_layers=scan_layers)
    params = qwen3_interop.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg)
    return qwen3.Qwen3ForCausalLM(cfg), params


@pytest.mark.parametrize("tie, scan_layers", [(False, False), (True, True)], ids=["untied", "tied-scanned"])
def test_logits_equal_transformers_with_left_padding(tie, scan_layers):
    hf = _hf_model(tie)
    model, params = _ours(hf, scan_layers)
    assert model.cfg.head_dim == 12 and model.cfg.qk_norm
    rows = np.random.default_rng(0).integers(1, 97, (3, 11)).tolist()
    ids, mask, positions = left_padded([rows[0], rows[1][:7], rows[2][:4]])
    ours = np.asarray(model.apply({"params": params}, ids, attention_mask_BxT=mask, position_ids_BxT=positions))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)).logits
    assert np.abs(ours - ref.numpy())[mask.astype(bool)].max() <= 1e-5
    back = qwen3_interop.params_to_hf(params, model.cfg)
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(back[name], tensor.numpy(), err_msg=name)


def test_the_qk_norms_change_the_logits():
    """Against the same weights read as Llama (no q/k norms), the logits differ: the norms are applied."""
    hf = _hf_model()
    model, params = _ours(hf)
    ids = np.random.default_rng(3).integers(0, 97, (1, 9))
    llama_like = qwen3.Qwen3ForCausalLM(qwen3.Qwen3Config(**{**model.cfg.__dict__, "qk_norm": False}))
    without = {**params, **{k: {**v, "self_attn": {n: p for n, p in v["self_attn"].items() if "norm" not in n}}
                            for k, v in params.items() if k.startswith("h_")}}
    assert not np.allclose(model.apply({"params": params}, ids), llama_like.apply({"params": without}, ids),
                           atol=1e-3)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_import_then_export_is_bit_identical_and_loads_in_transformers(tmp_path, tie):
    hf = _hf_model(tie)
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    _tokenizer_json(src / "tokenizer.json", vocab_size=97)
    import_hf(str(src), tmp_path / "work")
    run, state = run_lib.load_run(tmp_path / "work")
    run.checkpointer.close()
    assert run.cfg.model.family == "qwen3" and run.cfg.model.head_dim == 12
    ids = np.random.default_rng(1).integers(0, 97, (2, 13))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(run.model.apply({"params": state.params}, ids)) - ref).max() <= 1e-5
    out = export(tmp_path / "work", tmp_path / "back")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is transformers.Qwen3ForCausalLM
    original = hf.state_dict()
    assert reloaded.state_dict().keys() == original.keys()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    for key in ("num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "use_sliding_window"):
        assert getattr(reloaded.config, key) == getattr(hf.config, key), key


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_greedy_and_beam_search_equal_transformers_generate(scan_layers):
    hf = _hf_model(initializer_range=0.2)  # decisive next-token choices, not float32 near-ties
    model, params = _ours(hf, scan_layers)
    assert_generate_equals_transformers(hf, model, params)


def test_qwen3_tiny_trains_exports_and_transformers_generates_the_same(tmp_path):
    cfg = config_lib.load("qwen3_tiny", [
        "--config.model.vocab_size=512", "--config.model.max_len=32", "--config.data.max_bytes=60000",
        "--config.train.steps=12", "--config.train.batch_size=16", "--config.train.log_every=1",
        "--config.train.eval_every=12", "--config.train.eval_batches=1", "--config.train.progress_bar=false",
        "--config.optim.warmup_steps=2"])
    train.train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    out = export(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf) is transformers.Qwen3ForCausalLM
    run, state = run_lib.load_run(tmp_path / "run")
    run.checkpointer.close()
    prompt = run.tokenizer.encode("def ").ids
    ours = run_lib.generate_ids(run, state.params, [prompt], max_new_tokens=10, temperature=0.0)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):].tolist()
    assert ours == cut_after(ref, hf.generation_config.eos_token_id)


@pytest.mark.parametrize("change, message", [
    ({"use_sliding_window": True}, "use_sliding_window=True is not supported"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types ['full_attention', 'sliding_attention']"),
    ({"attention_bias": True}, "attention_bias=True is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0}},
     "Qwen3 config.json: RoPE scaling ('yarn') is not supported"),
])
def test_unsupported_hf_configs_are_refused(change, message):
    with pytest.raises(UserError) as error:
        qwen3_interop.config_from_hf({**_hf_model().config.to_dict(), **change})
    assert message in str(error.value)


def test_a_bad_qwen3_config_is_one_line(tmp_path):
    result = _cli("train", "--config", "configs/qwen3_tiny.py", "--config.model.n_kv_heads=3",
                  "--workdir", str(tmp_path / "w"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "divisible by model.n_kv_heads (3)" in lines[0]
