"""LoRA: adapters created by the model's init beside their projections, the frozen-base optimizer,
and `flax-lm train` with peft.method=lora (resume, init_from, best checkpoint, AOT memory)."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from test_cli import TINY, flax_lm

from flax_lm.models import bert, gpt2, lora
from flax_lm.training.optim import freeze_except

CFG = gpt2.GPT2Config(vocab_size=97, max_len=24, d_model=32, n_layers=2, n_heads=4, d_ff=48)
IDS = np.arange(20).reshape(2, 10) % CFG.vocab_size


def _adapted(model, settings, ids=IDS):
    am = lora.adapted(model, settings)
    params = nn.unbox(am.init(jax.random.PRNGKey(0), jnp.zeros((1, ids.shape[1]), jnp.int32))["params"])
    return am, params


def _perturb_b(params, seed=0):
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
        if "lora_b" in jax.tree_util.keystr(p) else x, params)


def _paths(tree, word):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree) if word in
            jax.tree_util.keystr(p)]


@pytest.mark.parametrize("scan", [False, True])
def test_adapters_start_as_the_base_and_equal_the_merged_kernel(scan):
    import dataclasses
    model = gpt2.GPT2LMHeadModel(dataclasses.replace(CFG, scan_layers=scan))
    settings = lora.LoraSettings("gpt2", ("c_attn",), 4, 16.0)
    am, params = _adapted(model, settings)
    assert isinstance(am, gpt2.GPT2LMHeadModel)
    assert len(_paths(params, "lora_a")) == (1 if scan else CFG.n_layers)
    base, _ = lora.split(params)
    np.testing.assert_array_equal(am.apply({"params": params}, IDS), model.apply({"params": base}, IDS))
    moved = _perturb_b(params)
    ours = am.apply({"params": moved}, IDS)
    assert not np.allclose(ours, model.apply({"params": base}, IDS), atol=1e-3)
    np.testing.assert_allclose(ours, model.apply({"params": lora.merge(moved, settings)}, IDS), atol=1e-5)


def test_a_slice_of_bert_fused_qkv_gets_its_own_adapter():
    cfg = bert.BertConfig(vocab_size=97, max_len=24, d_model=32, n_layers=2, n_heads=4, d_ff=48, num_labels=3)
    model = bert.BertForSequenceClassification(cfg)
    settings = lora.LoraSettings("bert", ("query", "value"), 2, 4.0)
    am = lora.adapted(model, settings)
    zeros = jnp.zeros((1, 10), jnp.int32)
    params = nn.unbox(am.init(jax.random.PRNGKey(0), zeros, zeros, jnp.ones((1, 10), jnp.int32))["params"])
    assert {p.rsplit("[", 1)[1] for p in _paths(params, "lora_")} == {
        "'lora_a_query']", "'lora_b_query']", "'lora_a_value']", "'lora_b_value']"}
    moved = _perturb_b(params)
    ids, tt, mask = IDS, np.zeros_like(IDS), np.ones_like(IDS)
    merged = lora.merge(moved, settings)
    base, _ = lora.split(moved)
    kernel_delta = merged["bert"]["layer_0"]["attention"]["qkv"]["kernel"] - base["bert"]["layer_0"]["attention"][
        "qkv"]["kernel"]
    assert np.all(kernel_delta[:, 1] == 0) and np.any(kernel_delta[:, 0] != 0)  # the key slice is not adapted
    np.testing.assert_allclose(am.apply({"params": moved}, ids, tt, mask),
                               model.apply({"params": merged}, ids, tt, mask), atol=1e-5)


def test_dropout_applies_to_the_adapter_input_only_in_training():
    settings = lora.LoraSettings("gpt2", ("c_attn",), 4, 16.0, dropout=0.5)
    model = gpt2.GPT2LMHeadModel(CFG)
    am, params = _adapted(model, settings)
    moved = _perturb_b(params)
    eval_out = am.apply({"params": moved}, IDS)
    # base dropout off (deterministic), only the adapter's dropout sees the rng
    train_out = am.apply({"params": moved}, IDS, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(eval_out, train_out, atol=1e-4)
    base_out = am.apply({"params": params}, IDS, rngs={"dropout": jax.random.PRNGKey(3)})
    np.testing.assert_allclose(base_out, am.apply({"params": params}, IDS), atol=1e-6)  # B = 0: no effect


def test_base_gets_no_gradient_and_holds_no_optimizer_state():
    settings = lora.LoraSettings("gpt2", ("c_attn",), 4, 16.0)
    am, params = _adapted(gpt2.GPT2LMHeadModel(CFG), settings)
    tx = freeze_except(optax.adam(1e-2), lora.trainable_mask)
    state = tx.init(params)
    n_state = sum(x.size for x in jax.tree.leaves(state))
    n_adapter = sum(x.size for x in jax.tree.leaves(lora.split(params)[1]))
    assert n_state <= 2 * n_adapter + 8  # Adam's two moments for the adapters only (+ counts)

    def loss(p):
        return -jnp.mean(jax.nn.log_softmax(am.apply({"params": p}, IDS))[..., 0])
    grads = jax.grad(loss)(params)
    base_grads, adapter_grads = lora.split(grads)
    assert all(not np.any(g) for g in jax.tree.leaves(base_grads))
    assert any(np.any(g) for g in jax.tree.leaves(adapter_grads))


def test_classifier_head_stays_trainable():
    mask = lora.trainable_mask({"encoder": {"qkv": {"kernel": 1, "lora_a_query": 1}},
                                "classifier": {"kernel": 1, "bias": 1}})
    assert mask == {"encoder": {"qkv": {"kernel": False, "lora_a_query": True}},
                    "classifier": {"kernel": True, "bias": True}}


def test_peft_config_keys_are_validated():
    from flax_lm.config import load
    from flax_lm.errors import UserError
    assert load.load(None, ["--config.peft.rank=4"]).peft.rank == 4
    with pytest.raises(UserError, match="peft.rank"):
        load.load(None, ["--config.peft.rank=0"])
    with pytest.raises(UserError, match="peft.method"):
        load.load(None, ["--config.peft.method=qlora"])
    assert load.load(None, ["--config.peft.method=lora"]).peft.method == "lora"


def test_targets_matching_nothing_is_one_line(tmp_path):
    done = flax_lm("train", *TINY, "--config.train.steps=2", "--config.peft.method=lora",
                   "--config.peft.targets=q_proj", "--workdir", str(tmp_path / "w"))
    assert done.returncode != 0 and "peft.targets=q_proj matches no projection" in done.stderr
    assert "Traceback" not in done.stderr


def _state(workdir, step=None):
    from flax_lm.workdir import run as run_lib
    run, state = run_lib.load_run(workdir, step)
    return jax.tree.map(np.asarray, jax.device_get(state))


LORA = ["--config.peft.method=lora", "--config.peft.rank=4", "--config.optim.learning_rate=1e-2",
        "--config.model.scan_layers=true"]


def test_lora_fine_tuning_through_the_cli(tmp_path):
    """A full run, then LoRA runs from it (init_from): the base stays bit-equal to the source,
    the adapters move, resume after a crash equals the uninterrupted run, best is kept."""
    source = str(tmp_path / "source")
    done = flax_lm("train", *TINY, "--config.train.steps=2", "--config.model.scan_layers=true", "--workdir", source)
    assert done.returncode == 0, done.stderr
    args = [*TINY, *LORA, f"--config.train.init_from={source}", "--config.train.steps=4",
            "--config.train.checkpoint_every=2", "--config.train.eval_every=2", "--config.train.keep_checkpoints=5",
            "--config.train.best_metric=loss"]
    once, twice = str(tmp_path / "once"), str(tmp_path / "twice")
    for work in (once, twice):
        done = flax_lm("train", *args, "--workdir", work)
        assert done.returncode == 0, done.stderr
    shutil.rmtree(tmp_path / "twice" / "checkpoints" / "4")  # a crash after step 2's checkpoint
    done = flax_lm("train", *args, "--workdir", twice)
    assert done.returncode == 0, done.stderr

    src = _state(source).params
    final = _state(once, step=4)
    base, adapters = lora.split(final.params)
    jax.tree.map(np.testing.assert_array_equal, base, src)
    assert all(np.any(b) for b in jax.tree.leaves(adapters) if b.ndim > 2)  # lora_b left zero
    # Adam's moments exist for the adapters only
    assert sum(x.size for x in jax.tree.leaves(final.opt_state)) <= 2 * sum(x.size for x in jax.tree.leaves(
        adapters)) + 16
    jax.tree.map(np.testing.assert_array_equal, final, _state(twice, step=4))
    record = json.loads(next((tmp_path / "once" / "best").glob("*.json")).read_text())
    assert record["step"] in (2, 4)
    best = _state(once)  # load_run's default: the best checkpoint
    jax.tree.map(np.testing.assert_array_equal, lora.split(best.params)[0], src)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_lora_trains_every_family(tmp_path, family, shakespeare):
    task = dict(bert="masked_lm", llama="causal_lm")[family]
    from flax_lm.training import train
    from flax_lm.config import load
    cfg = tiny_config(train=dict(steps=3, eval_every=3, checkpoint_every=3))
    cfg.model.family, cfg.task, cfg.peft.method, cfg.peft.rank = family, task, "lora", 4
    load.validate(cfg)
    train.train(cfg, tmp_path)
    params = _state(tmp_path).params
    assert any(np.any(b) for b in jax.tree.leaves(lora.split(params)[1]))


def test_compile_reports_less_optimizer_memory_with_lora(tmp_path):
    pytest.importorskip("libtpu", reason="TPU topologies need libtpu")
    reports = {}
    for name, extra in (("full", []), ("lora", ["--config.peft.method=lora"])):
        out = tmp_path / f"{name}.json"
        done = flax_lm("compile", "--config", "gpt2_tiny", "--topology", "v5e-4", "--json", str(out),
                       "--config.train.batch_size=16", *extra)
        assert done.returncode == 0, done.stderr
        reports[name] = json.loads(out.read_text())["per_chip_bytes"]
    full, low = reports["full"], reports["lora"]
    assert low["parameters"] > full["parameters"]  # the adapters are added to the base
    assert low["optimizer_state"] < 0.05 * full["optimizer_state"]
    assert low["parameters"] + low["optimizer_state"] < 0.4 * (full["parameters"] + full["optimizer_state"])


def _small_sst2(tmp_path) -> list[str]:
    """--config.data.* overrides for the first rows of the shared SST-2 copy."""
    from conftest import SHARED_DATA
    sst2 = SHARED_DATA / "sst2"
    if not sst2.is_dir():
        pytest.skip(f"shared data not found at {sst2}")
    out = []
    for split, name, rows in (("train", "train.tsv", 300), ("validation", "dev.tsv", 50), ("test", "dev.tsv", 50)):
        lines = (sst2 / name).read_text().splitlines()[:rows + 1]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        out.append(f"--config.data.{split}={tmp_path / f'{split}.tsv'}")
    return out


def _logits_and_state(workdir, ids):
    """The logits of a workdir's newest checkpoint for `ids` (B x T), and that state as numpy."""
    from flax_lm.workdir import run as run_lib
    run, state = run_lib.load_run(workdir)
    run.checkpointer.close()
    if run.cfg.model.family == "bert":
        out = run.model.apply({"params": state.params}, ids, np.zeros_like(ids), np.ones_like(ids))
    else:
        out = run.model.apply({"params": state.params}, ids)
    return np.asarray(out[0] if isinstance(out, tuple) else out), jax.tree.map(np.asarray, jax.device_get(state))


def _flax_logits(workdir, ids):
    return _logits_and_state(workdir, ids)[0]


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_export_writes_a_peft_adapter_and_a_merged_model(tmp_path, family):
    """`flax-lm export` of a LoRA run: the adapter directory loads in peft on the exported base with
    flax_lm's logits; --merge writes a plain model transformers loads with the same logits."""
    peft = pytest.importorskip("peft")
    import torch
    import transformers
    common = [*TINY, "--config.model.family=llama"] if family == "llama" else TINY
    if family == "bert":
        common = ["--config", "sst2", "--config.model.d_model=32", "--config.model.n_layers=1",
                  "--config.model.n_heads=2", "--config.model.d_ff=64", "--config.model.vocab_size=512",
                  "--config.model.max_len=32", "--config.data.seq_len=32", "--config.train.batch_size=8",
                  "--config.train.progress_bar=false", "--config.optim.warmup_steps=1", "--config.train.eval_every=1", "--config.train.best_metric=",
                  *_small_sst2(tmp_path)]
    source, tuned = str(tmp_path / "source"), str(tmp_path / "tuned")
    done = flax_lm("train", *common, "--config.train.steps=1", "--workdir", source)
    assert done.returncode == 0, done.stderr
    done = flax_lm("train", *common, "--config.peft.method=lora", "--config.peft.rank=4",
                   "--config.optim.learning_rate=3e-2", f"--config.train.init_from={source}",
                   "--config.train.steps=3", "--workdir", tuned)
    assert done.returncode == 0, done.stderr
    for args in (["--workdir", source, "--out", str(tmp_path / "base_hf")],
                 ["--workdir", tuned, "--out", str(tmp_path / "adapter")],
                 ["--workdir", tuned, "--out", str(tmp_path / "merged"), "--merge"]):
        done = flax_lm("export", *args)
        assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    auto = (transformers.AutoModelForSequenceClassification if family == "bert"
            else transformers.AutoModelForCausalLM)
    ids = np.arange(1, 11).reshape(1, 10)
    ours = _flax_logits(tuned, ids)
    assert not np.allclose(ours, _flax_logits(source, ids), atol=1e-4)
    base = auto.from_pretrained(str(tmp_path / "base_hf")).eval()
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()(
            torch.from_numpy(ids)).logits.numpy()
        merged = auto.from_pretrained(str(tmp_path / "merged")).eval()(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    np.testing.assert_allclose(merged, ours, atol=1e-5)
