"""ModernBERT: logits equal `transformers.ModernBertModel` / `ModernBertForMaskedLM` /
`ModernBertForSequenceClassification` / `ModernBertForTokenClassification` (local windows shorter
than the sequence, padding in the mask), import then export is bit-identical, the
modernbert_tiny recipe trains on the default corpus, and what is not implemented is refused."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_interop import SENTENCES, _cli  # noqa: E402

from flax_lm.config import load as config_lib  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.interop import modernbert as interop  # noqa: E402
from flax_lm.interop.export import export  # noqa: E402
from flax_lm.interop.hf_import import import_hf  # noqa: E402
from flax_lm.models import modernbert  # noqa: E402
from flax_lm.training import train  # noqa: E402
from flax_lm.workdir import run as run_lib  # noqa: E402

# 4 layers, global every 3rd (layers 0 and 3), a local window of +-4 on sequences of 20
HF_TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
               max_position_embeddings=64, local_attention=8, global_attn_every_n_layers=3, pad_token_id=0,
               bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
               global_rope_theta=1000.0, local_rope_theta=50.0)
HEAD_CLASSES = {"": "ModernBertModel", "masked_lm": "ModernBertForMaskedLM",
                "sequence_classification": "ModernBertForSequenceClassification",
                "token_classification": "ModernBertForTokenClassification",
                "question_answering": "ModernBertForQuestionAnswering"}


def _hf_model(arch="ModernBertForMaskedLM", **overrides):
    torch.manual_seed(0)
    config = transformers.ModernBertConfig(**{**HF_TINY, "num_labels": 3, **overrides})
    config._attn_implementation = "sdpa"
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():  # norms start at ones and the biases at zeros: make them count
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def _ours(hf, head):
    fields = interop.config_from_hf(hf.config.to_dict())
    cfg = modernbert.ModernBertConfig(**{k: v for k, v in fields.items() if k != "family"})
    params = interop.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg, head)
    return modernbert.HEADS[head](cfg), params


def _batch(seed=0):
    """Two rows of 20 tokens, the second padded after 13: longer than the +-4 window."""
    ids = np.random.default_rng(seed).integers(3, 97, (2, 20))
    mask = np.ones((2, 20), np.int32)
    mask[1, 13:] = 0
    ids[1, 13:] = 0
    return ids, mask


def _hf_out(hf, ids, mask):
    with torch.no_grad():
        return hf(torch.tensor(ids), attention_mask=torch.tensor(mask))


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False}], ids=["tied", "untied"])
def test_masked_lm_logits_equal_transformers_with_local_windows_and_padding(overrides):
    hf = _hf_model(**overrides)
    assert hf.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    model, params = _ours(hf, "masked_lm")
    ids, mask = _batch()
    ours = np.asarray(model.apply({"params": params}, ids, None, mask))
    ref = _hf_out(hf, ids, mask).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours - ref)[real].max() <= 1e-5
    positions = np.array([[0, 5, 19], [2, 7, 12]])
    at = np.asarray(model.apply({"params": params}, ids, None, mask, masked_positions_BxP=positions))
    np.testing.assert_allclose(at, np.take_along_axis(ours, positions[..., None], 1), atol=1e-6)


def test_the_local_window_and_the_local_rotary_base_matter():
    """The same weights with a window covering everything, or one rotary base, give other logits:
    the parity above tests both."""
    hf = _hf_model(initializer_range=0.3)  # attention far from uniform, so that the rotations count
    model, params = _ours(hf, "masked_lm")
    ids, mask = _batch(1)
    ours = np.asarray(model.apply({"params": params}, ids, None, mask))
    for change in ({"local_attention": 64}, {"local_rope_theta": model.cfg.rope_theta}):
        other = modernbert.ModernBertForMaskedLM(modernbert.ModernBertConfig(**{**model.cfg.__dict__, **change}))
        assert np.abs(np.asarray(other.apply({"params": params}, ids, None, mask)) - ours).max() > 1e-3, change


@pytest.mark.parametrize("head, pooling", [("", "cls"), ("sequence_classification", "cls"),
                                           ("sequence_classification", "mean"), ("token_classification", "cls"),
                                           ("question_answering", "cls")])
def test_base_and_task_heads_equal_transformers(head, pooling):
    hf = _hf_model(HEAD_CLASSES[head], classifier_pooling=pooling,
                   num_labels=2 if head == "question_answering" else 3)  # QA: a start and an end score
    model, params = _ours(hf, head)
    ids, mask = _batch(2)
    ours = model.apply({"params": params}, ids, None, mask)
    out = _hf_out(hf, ids, mask)
    real = mask.astype(bool)
    if head == "":
        assert np.abs(np.asarray(ours) - out.last_hidden_state.numpy())[real].max() <= 1e-5
    elif head == "sequence_classification":
        assert np.abs(np.asarray(ours) - out.logits.numpy()).max() <= 1e-5
    elif head == "token_classification":
        assert np.abs(np.asarray(ours) - out.logits.numpy())[real].max() <= 1e-5
    else:
        for mine, theirs in zip(ours, (out.start_logits, out.end_logits)):
            assert np.abs(np.asarray(mine) - theirs.numpy())[real].max() <= 1e-5
    back = interop.params_to_hf(params, model.cfg, head)
    if head == "":  # ModernBertModel names its tensors without the "model." of the classes with a head
        back = {k.removeprefix(interop.PREFIX): v for k, v in back.items()}
    for name, tensor in hf.state_dict().items():
        if name == "decoder.weight":
            continue
        np.testing.assert_array_equal(back[name], tensor.numpy(), err_msg=name)


def _hf_dir(path, arch, **overrides):
    """A random tiny ModernBERT saved with a WordPiece tokenizer.json trained here."""
    from flax_lm.data import wordpiece
    tokenizer = wordpiece.train_wordpiece(SENTENCES * 20, 97, lowercase=True)
    hf = _hf_model(arch, vocab_size=tokenizer.get_vocab_size(), **overrides)
    hf.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return hf


@pytest.mark.parametrize("arch, overrides", [("ModernBertForMaskedLM", {}),
                                             ("ModernBertForMaskedLM", {"tie_word_embeddings": False}),
                                             ("ModernBertForSequenceClassification", {"classifier_pooling": "mean"}),
                                             ("ModernBertModel", {})], ids=["mlm", "mlm-untied", "cls-mean", "base"])
def test_import_then_export_is_bit_identical_and_loads_in_transformers(tmp_path, arch, overrides):
    import safetensors.numpy
    hf = _hf_dir(tmp_path / "hf", arch, **overrides)
    import_hf(str(tmp_path / "hf"), tmp_path / "work")
    run, state = run_lib.load_run(tmp_path / "work")
    run.checkpointer.close()
    assert run.cfg.model.family == "modernbert"
    ids, mask = _batch(3)
    ids = ids % hf.config.vocab_size
    ours = run.model.apply({"params": state.params}, ids, None, mask)
    ref = _hf_out(hf, ids, mask)
    ref = ref.last_hidden_state if arch == "ModernBertModel" else ref.logits
    rows = slice(None) if arch.endswith("Classification") else mask.astype(bool)
    assert np.abs(np.asarray(ours) - ref.numpy())[rows].max() <= 1e-5
    out = export(tmp_path / "work", tmp_path / "back")
    original = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    exported = safetensors.numpy.load_file(str(out / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    reloaded, info = getattr(transformers, "AutoModel" if arch == "ModernBertModel" else {
        "ModernBertForMaskedLM": "AutoModelForMaskedLM",
        "ModernBertForSequenceClassification": "AutoModelForSequenceClassification"}[arch]).from_pretrained(
            out, output_loading_info=True)
    assert type(reloaded).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    for key in ("layer_types", "local_attention", "rope_parameters", "classifier_pooling", "tie_word_embeddings"):
        assert getattr(reloaded.config, key) == getattr(hf.config, key), key


def test_modernbert_tiny_pretrains_on_the_default_corpus_and_exports(tmp_path):
    cfg = config_lib.load("modernbert_tiny", [
        "--config.model.vocab_size=512", "--config.data.max_bytes=60000", "--config.train.steps=12",
        "--config.train.batch_size=16", "--config.train.log_every=1", "--config.train.eval_every=12",
        "--config.train.eval_batches=1", "--config.train.progress_bar=false", "--config.optim.warmup_steps=2"])
    train.train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    assert any("eval/mlm_accuracy" in r for r in rows)
    out = export(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(hf) is transformers.ModernBertForMaskedLM
    run, state = run_lib.load_run(tmp_path / "run")
    run.checkpointer.close()
    ids = np.asarray([run.tokenizer.encode("def f(x): return x").ids])
    ours = np.asarray(run.model.apply({"params": state.params}, ids, None, np.ones_like(ids)))
    with torch.no_grad():
        assert np.abs(ours - hf(torch.tensor(ids)).logits.numpy()).max() <= 1e-4


def test_the_cli_trains_the_recipe_a_few_steps(tmp_path):
    result = _cli("train", "--config", "configs/modernbert_tiny.py", "--config.model.vocab_size=512",
                  "--config.data.max_bytes=30000", "--config.train.steps=3", "--config.train.batch_size=8",
                  "--config.train.eval_every=3", "--config.train.eval_batches=1",
                  "--config.train.progress_bar=false", "--config.optim.warmup_steps=1",
                  "--workdir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "w" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("change, message", [
    ({"hidden_activation": "silu"}, "hidden_activation='silu' is not supported"),
    ({"norm_bias": True}, "norm_bias=True is not supported"),
    ({"attention_bias": True}, "attention_bias=True is not supported"),
    ({"layer_types": ["full_attention", "full_attention", "sliding_attention", "full_attention"]},
     "layer_types ['full_attention', 'full_attention'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "RoPE scaling ('yarn') is not supported"),
])
def test_unsupported_hf_configs_are_refused(change, message):
    with pytest.raises(UserError) as error:
        interop.config_from_hf({**_hf_model().config.to_dict(), **change})
    assert message in str(error.value)
