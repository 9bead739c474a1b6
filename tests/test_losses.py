"""The fused, chunked linear cross-entropy equals the plain one, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_lm.ops.losses import linear_cross_entropy


def _inputs(b=3, t=10, d=8, v=37, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    hidden = jax.random.normal(keys[0], (b, t, d))
    weight = jax.random.normal(keys[1], (v, d))
    targets = jax.random.randint(keys[2], (b, t), 0, v)
    weights = (jax.random.uniform(keys[3], (b, t)) > 0.3).astype(jnp.float32)
    return hidden, weight, targets, weights


def _optax_loss(hidden, weight, targets, weights):
    logits = hidden @ weight.T
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)


@pytest.mark.parametrize("chunk_len", [0, 1, 3, 5, 10])
def test_chunked_equals_plain_cross_entropy(chunk_len):
    hidden, weight, targets, weights = _inputs()
    expected, expected_grads = jax.value_and_grad(_optax_loss, argnums=(0, 1))(hidden, weight, targets, weights)
    fn = jax.jit(jax.value_and_grad(
        lambda h, w: linear_cross_entropy(h, w, targets, weights, chunk_len), argnums=(0, 1)))
    value, grads = fn(hidden, weight)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g, e, atol=1e-5)
    np.testing.assert_allclose(linear_cross_entropy(hidden, weight, targets, weights, chunk_len), expected,
                               rtol=1e-6)


@pytest.mark.parametrize("chunk_len", [0, 3, 10])
def test_label_smoothing_equals_optax_on_smoothed_one_hot_targets(chunk_len):
    hidden, weight, targets, weights = _inputs()
    eps = 0.1

    def expected_loss(h, w):
        labels = optax.smooth_labels(jax.nn.one_hot(targets, w.shape[0]), eps)
        return jnp.sum(optax.softmax_cross_entropy(h @ w.T, labels) * weights)

    expected, expected_grads = jax.value_and_grad(expected_loss, argnums=(0, 1))(hidden, weight)
    value, grads = jax.jit(jax.value_and_grad(
        lambda h, w: linear_cross_entropy(h, w, targets, weights, chunk_len, label_smoothing=eps), argnums=(0, 1)))(
        hidden, weight)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_upstream_gradient_scales_and_bf16_runs():
    hidden, weight, targets, weights = _inputs()
    g = jax.grad(lambda h: 3.0 * linear_cross_entropy(h, weight, targets, weights, 4))(hidden)
    np.testing.assert_allclose(g, 3.0 * jax.grad(_optax_loss)(hidden, weight, targets, weights), atol=1e-5)
    grads = jax.grad(lambda h, w: linear_cross_entropy(h, w, targets, weights, 4), argnums=(0, 1))(
        hidden.astype(jnp.bfloat16), weight.astype(jnp.bfloat16))
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16


def test_training_smooths_the_targets_and_evaluation_reports_the_plain_loss():
    from flax_lm.tasks import CausalLM
    hidden, weight, targets, weights = _inputs()
    batch = {"targets": targets, "weights": weights}
    task = CausalLM(4, label_smoothing=0.1)
    plain, smoothed = (linear_cross_entropy(hidden, weight, targets, weights, 4, eps) for eps in (0.0, 0.1))
    assert float(smoothed) != float(plain)
    assert task.cross_entropy(hidden, weight, batch, deterministic=True) == plain
    assert task.cross_entropy(hidden, weight, batch, deterministic=False) == smoothed


def test_label_smoothing_outside_language_modelling_is_refused():
    from flax_lm.config import load as config
    from flax_lm.errors import UserError
    with pytest.raises(UserError, match="train.label_smoothing applies to the tasks that predict text"):
        config.load("bert_tiny", ["--config.train.label_smoothing=0.1"])
    with pytest.raises(UserError, match=r"'train.label_smoothing' must be in \[0, 1\)"):
        config.load("gpt2_tiny", ["--config.train.label_smoothing=1.0"])
