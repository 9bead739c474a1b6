"""`flax-lm import --hf BASE --peft ADAPTER`: a PEFT LoRA adapter as a LoRA workdir with PeftModel's
logits, that trains on and exports the same adapter back; unsupported adapters are one line."""

import json

import jax
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from conftest import SHAKESPEARE  # noqa: E402
from test_cli import flax_lm  # noqa: E402
from test_interop import SENTENCES, _tokenizer_json  # noqa: E402
from test_lora import _logits_and_state  # noqa: E402

from flax_lm.models import lora  # noqa: E402
from flax_lm.workdir import layout  # noqa: E402
from flax_lm.workdir import run as run_lib  # noqa: E402

# HF class -> (config, PEFT target_modules, task_type)
MODELS = {
    "GPT2LMHeadModel": (lambda vocab: transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
        ["c_attn", "c_proj", "c_fc"], "CAUSAL_LM"),
    "LlamaForCausalLM": (lambda vocab: transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "CAUSAL_LM"),
    "BertForSequenceClassification": (lambda vocab: transformers.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, num_labels=3), ["query", "key", "value"], "SEQ_CLS"),
}


def _base_and_adapter(tmp_path, arch: str, **lora_config):
    """(base dir, adapter dir): a random tiny `transformers.<arch>` with its tokenizer.json, and a PEFT
    LoRA adapter of it with random A and B (and, for a classifier, a changed classifier)."""
    from flax_lm.data import tokenizer as tokenizer_lib
    from flax_lm.data import wordpiece
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    if arch.startswith("Bert"):
        tokenizer = wordpiece.train_wordpiece(SENTENCES * 20, 120, lowercase=True)
        tokenizer.save(str(base / "tokenizer.json"))
    else:
        _tokenizer_json(base / "tokenizer.json")
    make_config, targets, task_type = MODELS[arch]
    torch.manual_seed(0)
    model = getattr(transformers, arch)(make_config(tokenizer_lib.load(base / "tokenizer.json").get_vocab_size()))
    model.eval().save_pretrained(base)
    settings = dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets, task_type=task_type,
                    init_lora_weights=False, **lora_config)   # False: B random too, so the adapter changes logits
    tuned = peft.get_peft_model(model, peft.LoraConfig(**settings))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.5 * torch.randn_like(p))
    tuned.save_pretrained(adapter)
    return base, adapter


def _peft_logits(arch, base, adapter, ids):
    auto = (transformers.AutoModelForSequenceClassification if arch.startswith("Bert")
            else transformers.AutoModelForCausalLM)
    with torch.no_grad():
        model = auto.from_pretrained(base).eval()
        plain = model(torch.from_numpy(ids)).logits.numpy()
        return peft.PeftModel.from_pretrained(model, adapter).eval()(torch.from_numpy(ids)).logits.numpy(), plain


@pytest.mark.parametrize("arch", list(MODELS))
def test_an_imported_adapter_gives_peft_logits_and_exports_the_same_tensors(tmp_path, arch):
    base, adapter = _base_and_adapter(tmp_path, arch)
    work = tmp_path / "work"
    done = flax_lm("import", "--hf", str(base), "--peft", str(adapter), "--workdir", str(work))
    assert done.returncode == 0, done.stderr
    cfg = layout.load_config(work)
    assert (cfg.peft.method, cfg.peft.rank, cfg.peft.alpha, cfg.peft.dropout) == ("lora", 4, 8.0, 0.1)
    assert set(cfg.peft.targets.split(",")) == set(MODELS[arch][1])
    ids = np.arange(3, 13).reshape(1, 10)
    theirs, plain = _peft_logits(arch, base, adapter, ids)
    assert not np.allclose(theirs, plain, atol=1e-3)  # the adapter matters
    ours, _ = _logits_and_state(work, ids)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    done = flax_lm("export", "--workdir", str(work), "--out", str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    original = safetensors.numpy.load_file(str(adapter / "adapter_model.safetensors"))
    exported = safetensors.numpy.load_file(str(tmp_path / "back" / "adapter_model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], set(config["target_modules"])) == (4, 8.0, set(MODELS[arch][1]))


def _moved(after: dict, before: dict) -> list[bool]:
    return [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]


def test_an_imported_adapter_trains_on(tmp_path):
    """The imported workdir resumes from its step 0, and a LoRA run started from it (init_from) trains
    its adapters on: they move from the imported ones, the base stays bit-equal. A full fine-tuning
    run from it starts from the merged weights."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"shared data not found at {SHAKESPEARE}")
    from flax_lm.training import train
    base, adapter = _base_and_adapter(tmp_path, "GPT2LMHeadModel")
    work = tmp_path / "work"
    assert flax_lm("import", "--hf", str(base), "--peft", str(adapter), "--workdir", str(work)).returncode == 0
    ids = np.arange(3, 13)[None]
    imported_logits, imported = _logits_and_state(work, ids)
    imported_base, imported_adapters = lora.split(imported.params)

    cfg = layout.load_config(work)   # the run's own settings: resume
    cfg.train.update(steps=1, eval_every=1, checkpoint_every=1, progress_bar=False)
    cfg.optim.update(learning_rate=1e-2, warmup_steps=0)
    train.train(cfg, work)
    _, resumed = _logits_and_state(work, ids)
    assert int(resumed.step) == 1
    jax.tree.map(np.testing.assert_array_equal, lora.split(resumed.params)[0], imported_base)
    assert all(_moved(lora.split(resumed.params)[1], imported_adapters))

    cfg = layout.load_config(work)   # a new LoRA run on other data, from the imported adapters
    cfg.data.update(source=str(SHAKESPEARE), max_bytes=40_000, seq_len=16)
    cfg.train.update(steps=2, batch_size=8, eval_every=2, checkpoint_every=2, init_from=str(work))
    state, _ = run_lib.restore_or_init(run_lib.setup(cfg, tmp_path / "tuned"))
    start = jax.tree.map(np.asarray, jax.device_get(state.params))
    jax.tree.map(np.testing.assert_array_equal, lora.split(start)[1], lora.split(resumed.params)[1])
    train.train(cfg, tmp_path / "tuned")
    _, tuned = _logits_and_state(tmp_path / "tuned", ids)
    jax.tree.map(np.testing.assert_array_equal, lora.split(tuned.params)[0], imported_base)
    assert all(_moved(lora.split(tuned.params)[1], lora.split(resumed.params)[1]))

    cfg.peft.method = "none"  # full fine-tuning from the LoRA workdir: its merged weights
    cfg.train.init_from = str(tmp_path / "tuned")
    run = run_lib.setup(cfg, tmp_path / "full")
    state, _ = run_lib.restore_or_init(run)
    tuned_logits, _ = _logits_and_state(tmp_path / "tuned", ids)
    np.testing.assert_allclose(np.asarray(run.model.apply({"params": state.params}, ids)), tuned_logits, atol=1e-5)


def _edit_config(adapter, **changes):
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _add_tensor(adapter, name):
    path = adapter / "adapter_model.safetensors"
    tensors = safetensors.numpy.load_file(str(path))
    safetensors.numpy.save_file({**tensors, name: np.zeros((3, 32), np.float32)}, str(path))


@pytest.mark.parametrize("damage, message", [
    (lambda a: _edit_config(a, peft_type="IA3"), "peft_type 'IA3' is not supported"),
    (lambda a: _edit_config(a, use_dora=True), "use_dora=True is not supported"),
    (lambda a: _edit_config(a, use_rslora=True), "use_rslora=True is not supported"),
    (lambda a: _edit_config(a, rank_pattern={"c_attn": 8}), "rank_pattern={'c_attn': 8} is not supported"),
    (lambda a: _edit_config(a, bias="all"), "bias='all' is not supported"),
    (lambda a: _edit_config(a, layers_to_transform=[0]), "layers_to_transform=[0] is not supported"),
    (lambda a: _add_tensor(a, "base_model.model.score.weight"), "tensor 'score.weight' is not a LoRA weight"),
    (lambda a: (a / "adapter_config.json").unlink(), "no adapter_config.json"),
    (lambda a: (a / "adapter_model.safetensors").write_bytes(b"junk"), "cannot read the safetensors file"),
])
def test_unsupported_adapters_are_one_line(tmp_path, damage, message):
    base, adapter = _base_and_adapter(tmp_path, "GPT2LMHeadModel")
    damage(adapter)
    done = flax_lm("import", "--hf", str(base), "--peft", str(adapter), "--workdir", str(tmp_path / "work"))
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_an_adapter_of_some_layers_only_is_one_line(tmp_path):
    """An adapter whose layers flax_lm does not all adapt (a layer's tensors removed) is refused, not
    imported with fresh adapters in their place."""
    base, adapter = _base_and_adapter(tmp_path, "GPT2LMHeadModel")
    path = adapter / "adapter_model.safetensors"
    tensors = safetensors.numpy.load_file(str(path))
    safetensors.numpy.save_file({k: v for k, v in tensors.items() if ".h.1.attn.c_attn." not in k}, str(path))
    done = flax_lm("import", "--hf", str(base), "--peft", str(adapter), "--workdir", str(tmp_path / "work"))
    assert done.returncode == 2 and "has no lora_A/lora_B for transformer.h.1.attn.c_attn" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "LlamaForCausalLM"])
def test_generate_of_a_lora_workdir_equals_generate_of_the_peft_merged_model(tmp_path, arch):
    """Greedy `flax-lm generate` on a LoRA workdir (adapters non-zero) gives the tokens of
    transformers' generate() on PEFT's merge_and_unload() of the same adapter."""
    from flax_lm.data import tokenizer as tokenizer_lib
    base, adapter = _base_and_adapter(tmp_path, arch)
    work = tmp_path / "work"
    assert flax_lm("import", "--hf", str(base), "--peft", str(adapter), "--workdir", str(work)).returncode == 0
    tokenizer = tokenizer_lib.load(base / "tokenizer.json")
    prompt = "def f(x):"
    ids = tokenizer.encode(prompt).ids
    auto = transformers.AutoModelForCausalLM
    with torch.no_grad():
        merged = peft.PeftModel.from_pretrained(auto.from_pretrained(base).eval(), adapter).merge_and_unload().eval()
        theirs = merged.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(ids):].tolist()
        plain = auto.from_pretrained(base).eval().generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                                           eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert theirs != plain  # the adapter changes what is generated
    run, state = run_lib.load_run(work)
    run.checkpointer.close()
    ours = run_lib.generate_ids(run, state.params, [ids], max_new_tokens=12, temperature=0.0,
                                stop_token_ids="")[0]
    assert ours[:len(theirs)] == theirs[:len(ours)] and len(ours) >= 1
    done = flax_lm("generate", "--workdir", str(work), "--prompt", prompt, "--max-new-tokens", str(len(ours)),
                   "--temperature", "0")
    assert done.returncode == 0, done.stderr
    text = tokenizer.decode(ids + ours).replace("\r\n", "\n").replace("\r", "\n")  # as text-mode stdout reads
    assert done.stdout.rstrip("\n") == text.rstrip("\n")


def _random_adapters(model, settings, params, sample_args, seed=0, std=0.3):
    """`params` (a plain model's) with the adapters of `lora.adapted(model, settings)`, lora_b random."""
    import flax.linen as nn
    import jax.numpy as jnp
    adapted = lora.adapted(model, settings)
    fresh = nn.unbox(adapted.init(jax.random.PRNGKey(0), *[jnp.asarray(a) for a in sample_args])["params"])
    rng = np.random.RandomState(seed)
    adapters = jax.tree.map(lambda x: np.asarray(x) + std * rng.standard_normal(x.shape).astype(np.float32),
                            lora.split(fresh)[1])
    return adapted, lora.combine(params, adapters)


@pytest.mark.parametrize("family, scan", [("qwen3", False), ("qwen3", True), ("t5", False), ("t5", True)])
def test_t5_and_qwen3_lora_export_as_peft_adapters(tmp_path, family, scan):
    """The PEFT adapter `write_adapter` makes of a Qwen3 or T5 LoRA model (q,v and every
    projection of T5's self- and cross-attention and MLP) loads in PeftModel with flax_lm's logits."""
    from test_qwen3 import _hf_model
    from test_t5_model import HF_TINY as T5_TINY
    from flax_lm.interop import peft_adapter, qwen3 as qwen3_interop, t5 as t5_interop
    from flax_lm.models import qwen3, t5
    ids = np.arange(3, 13).reshape(1, 10)
    if family == "qwen3":
        hf, interop, targets = _hf_model(), qwen3_interop, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
        fields = {k: v for k, v in interop.config_from_hf(hf.config.to_dict()).items() if k != "family"}
        model = qwen3.Qwen3ForCausalLM(qwen3.Qwen3Config(**fields, scan_layers=scan))
        args, hf_args = (ids,), dict(input_ids=torch.from_numpy(ids))
    else:
        torch.manual_seed(0)
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_TINY, feed_forward_proj="gated-gelu"))
        interop, targets = t5_interop, ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
        fields = {k: v for k, v in interop.config_from_hf(hf.config.to_dict()).items() if k != "family"}
        model = t5.T5ForConditionalGeneration(t5.T5Config(**fields, scan_layers=scan))
        decoder_ids = np.concatenate([[[0]], ids[:, :6]], axis=1)
        args = (ids, decoder_ids)
        hf_args = dict(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(decoder_ids))
    hf.eval()
    params = interop.params_from_hf({k: v.detach().numpy() for k, v in hf.state_dict().items()}, model.cfg)
    settings = lora.LoraSettings(family, targets, 4, 8.0)
    # T5's unscaled attention scores amplify fp32 rounding: smaller updates keep its logits at 1e-5
    adapted, params = _random_adapters(model, settings, params, args, std=0.3 if family == "qwen3" else 0.03)
    ours = np.asarray(adapted.apply({"params": params}, *args))
    peft_adapter.write_adapter(tmp_path / "adapter", params, model.cfg, "seq2seq" if family == "t5" else "causal_lm",
                               settings, interop.params_to_hf)
    with torch.no_grad():
        plain = hf(**hf_args).logits.numpy()
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(**hf_args).logits.numpy()
    assert not np.allclose(ours, plain, atol=1e-3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
