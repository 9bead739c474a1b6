"""LoRA adapters as a parameter-tree transform, and the frozen-base optimizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_lm.models import lora
from flax_lm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from flax_lm.training.optim import freeze_except

CFG = GPT2Config(vocab_size=97, max_len=24, d_model=32, n_layers=2, n_heads=4, d_ff=48)
IDS = np.arange(20).reshape(2, 10) % CFG.vocab_size


def _setup(rank=4):
    model = GPT2LMHeadModel(CFG)
    base = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    adapted = lora.add_adapters(base, lora.default_targets("gpt2"), rank, jax.random.PRNGKey(1))
    return model, base, adapted


def _loss(model, params, alpha, rank):
    logits = model.apply({"params": lora.merge(params, alpha, rank)}, IDS)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])


def test_initial_adapted_model_equals_the_base():
    model, base, adapted = _setup()
    assert jax.tree.structure(lora.merge(adapted, 16.0, 4)) == jax.tree.structure(base)
    np.testing.assert_array_equal(model.apply({"params": lora.merge(adapted, 16.0, 4)}, IDS),
                                  model.apply({"params": base}, IDS))


def test_merge_adds_scaled_low_rank_product_to_the_targeted_kernel():
    _, base, adapted = _setup(rank=2)
    adapter_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(adapted)[0]
                     if "lora_a" in jax.tree_util.keystr(p)]
    assert len(adapter_paths) == CFG.n_layers and all("c_attn" in p for p in adapter_paths)

    def set_b(tree):
        if isinstance(tree, dict):
            return {k: (jnp.ones_like(v) if k == "lora_b" else set_b(v)) for k, v in tree.items()}
        return tree
    merged = lora.merge(set_b(adapted), 8.0, 2)
    changed = jax.tree.map(lambda m, w: bool(jnp.any(m != w)), merged, base)
    changed_paths = [jax.tree_util.keystr(p) for p, c in jax.tree_util.tree_flatten_with_path(changed)[0] if c]
    assert changed_paths and all("c_attn" in p and "kernel" in p for p in changed_paths)


def test_training_moves_only_adapters_and_base_holds_no_optimizer_state():
    model, base, adapted = _setup()
    tx = freeze_except(optax.adam(1e-2), lora.trainable_mask)
    state = tx.init(adapted)
    n_state = sum(x.size for x in jax.tree.leaves(state))
    n_adapter = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(adapted)[0]
                    if "lora_" in jax.tree_util.keystr(p))
    assert n_state <= 2 * n_adapter + 8  # Adam's two moments for the adapters only (+ counts)
    params = adapted
    for _ in range(3):
        grads = jax.grad(lambda p: _loss(model, p, 16.0, 4))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    new_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    old_leaves = jax.tree.leaves(adapted)
    for (path, new), old in zip(new_leaves, old_leaves):
        if "lora_" in jax.tree_util.keystr(path):
            continue
        np.testing.assert_array_equal(new, old)
    moved = [not np.array_equal(new, old) for (path, new), old in zip(new_leaves, old_leaves)
             if "lora_b" in jax.tree_util.keystr(path)]
    assert all(moved)
    assert _loss(model, params, 16.0, 4) < _loss(model, adapted, 16.0, 4)


def test_classifier_head_stays_trainable():
    mask = lora.trainable_mask({"encoder": {"query": {"kernel": 1, "lora_a": 1}},
                                "classifier": {"kernel": 1, "bias": 1}})
    assert mask == {"encoder": {"query": {"kernel": False, "lora_a": True}},
                    "classifier": {"kernel": True, "bias": True}}


def test_targets_matching_nothing_is_a_readable_error():
    with pytest.raises(ValueError, match="matches no projection"):
        lora.add_adapters({"h_0": {"mlp": {"kernel": jnp.zeros((2, 2))}}},
                          ("q_proj",), 2, jax.random.PRNGKey(0))


def test_peft_config_keys_are_validated():
    from flax_lm.config import load
    from flax_lm.errors import UserError
    assert load.load(None, ["--config.peft.rank=4"]).peft.rank == 4
    with pytest.raises(UserError, match="peft.rank"):
        load.load(None, ["--config.peft.rank=0"])
    with pytest.raises(UserError, match="peft.method"):
        load.load(None, ["--config.peft.method=qlora"])
    with pytest.raises(UserError, match="peft.method=lora"):
        load.load(None, ["--config.peft.method=lora"])


def test_gpt2_adapter_loads_in_peft_with_equal_logits(tmp_path):
    peft = pytest.importorskip("peft")
    import torch
    import transformers
    from flax_lm.interop import gpt2 as gpt2_interop
    from flax_lm.interop.peft_adapter import write_gpt2_adapter
    model, base, adapted = _setup(rank=4)
    rng = np.random.RandomState(0)
    adapted = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
        if "lora_b" in jax.tree_util.keystr(p) else x, adapted)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2_interop.config_to_hf(CFG)))
    tensors = gpt2_interop.params_to_hf(jax.tree.map(np.asarray, base), CFG)
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False)
    hf.eval()
    write_gpt2_adapter(tmp_path / "adapter", adapted, CFG.n_layers, rank=4, alpha=16.0)
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(IDS)).logits.numpy()
    ours = model.apply({"params": lora.merge(adapted, 16.0, 4)}, IDS)
    assert not np.allclose(ours, model.apply({"params": base}, IDS), atol=1e-3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
