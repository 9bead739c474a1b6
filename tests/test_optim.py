"""Learning-rate schedules and the weight-decay mask."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_lm.config import defaults
from flax_lm.training import optim
from flax_lm.models.gpt2 import GPT2Config, GPT2LMHeadModel


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay_to_the_floor(schedule):
    c = defaults.get_config().optim
    c.update(learning_rate=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    lr = optim.learning_rate_schedule(c, total_steps=110)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
    assert float(lr(110)) == pytest.approx(1.0 if schedule == "constant" else 0.1, abs=1e-6)
    if schedule == "cosine":
        assert float(lr(60)) == pytest.approx(0.55, abs=1e-6)


def test_decay_mask_skips_biases_and_layernorm():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=11, max_len=8, d_model=8, n_layers=1, n_heads=2, d_ff=16))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    for tree in (params, nn.unbox(params)):
        mask = nn.unbox(optim.decay_mask(tree))
        assert mask["wte"]["embedding"] and mask["h_0"]["mlp"]["c_fc"]["kernel"]
        assert not mask["h_0"]["mlp"]["c_fc"]["bias"] and not mask["ln_f"]["scale"]


def test_clipping_and_decay_apply():
    c = defaults.get_config().optim
    c.update(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, grad_clip_norm=1.0)
    tx = optim.make_optimizer(c, total_steps=10, n_layers=2)
    params = {"dense": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.05)  # decay only
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


@pytest.mark.parametrize("scale", [0.0, 0.1, 10.0, np.nan])
def test_clipping_is_optaxs(scale):
    """The same clipped gradients as optax.clip_by_global_norm (a norm of 0, below, above the
    bound, not finite), and the same state, so checkpoints written before stay readable."""
    grads = {"a": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.full(4, -scale)}
    ours, theirs = optim.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
    assert ours.init(grads) == theirs.init(grads)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
                 ours.update(grads, ours.init(grads))[0], theirs.update(grads, theirs.init(grads))[0])


def test_clipping_takes_a_norm_the_caller_has():
    grads = {"a": jnp.full(4, 3.0)}  # norm 6
    clip = optim.clip_by_global_norm(1.0)
    np.testing.assert_allclose(clip.update(grads, clip.init(grads), grad_norm=jnp.float32(30.0))[0]["a"], 0.1)
    np.testing.assert_allclose(clip.update(grads, clip.init(grads))[0]["a"], 0.5)


def test_adafactor_trains_t5_sharded_over_fsdp_and_tensor(tmp_path):
    """Adafactor's factored moments (vectors, not parameter-shaped) are replicated on the mesh
    while its full moments follow their parameters' sharding; training runs and learns."""
    from conftest import tiny_config

    from flax_lm.config import load as config
    from flax_lm.training import train
    cfg = tiny_config(train=dict(steps=12, eval_every=12, checkpoint_every=12),
                      optim=dict(optimizer="adafactor", learning_rate=1e-2, weight_decay=0.0),
                      parallel=dict(data=2, fsdp=2, tensor=2))
    cfg.task, cfg.model.family = "span_corruption", "t5"
    cfg.model.update(vocab_size=600, d_model=128, d_ff=256, head_dim=32, n_heads=4)  # 128 x 256: factored
    config.validate(cfg)
    metrics = train.train(cfg, tmp_path / "run")
    assert np.isfinite(metrics["loss"]) and metrics["loss"] < np.log(600)
