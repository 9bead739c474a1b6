"""Layer-wise learning-rate decay, gradual unfreezing and the weight-decay mask on a BERT tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_lm.config import defaults
from flax_lm.training import optim
from flax_lm.training.layerwise import depth
from flax_lm.models import bert

CFG = bert.BertConfig(vocab_size=50, max_len=16, d_model=16, n_layers=3, n_heads=2, d_ff=32, num_labels=2)


def _params(scan=False):
    import dataclasses
    model = bert.BertForSequenceClassification(dataclasses.replace(CFG, scan_layers=scan))
    import flax.linen as nn
    return nn.unbox(model.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"])


def _optim_cfg(**kw):
    c = defaults.get_config().optim
    c.update(dict(learning_rate=1e-2, warmup_steps=0, schedule="constant", min_lr_ratio=1.0, b2=0.999,
                  weight_decay=0.0, grad_clip_norm=0.0), **kw)
    return c


def _step_sizes(params, tx, steps=1):
    """Per top-level group, the largest absolute parameter change after `steps` updates with unit gradients."""
    state = tx.init(params)
    p = params
    for _ in range(steps):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
        p = optax.apply_updates(p, updates)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p, params)
    return {"embeddings": moved["bert"]["embeddings"]["word_embeddings"]["embedding"],
            **{i: moved["bert"][f"layer_{i}"]["output"]["kernel"] for i in range(3)},
            "head": moved["classifier"]["kernel"]}


def test_depths():
    params = _params()
    depths = jax.tree_util.tree_map_with_path(lambda p, x: depth(p, x, 3), params)
    assert depths["bert"]["embeddings"]["LayerNorm"]["scale"] == 0
    assert depths["bert"]["layer_2"]["attention"]["qkv"]["kernel"] == 3
    assert depths["bert"]["pooler"]["kernel"] == 4 and depths["classifier"]["bias"] == 4
    scanned = _params(scan=True)["bert"]["layers"]["intermediate"]["kernel"]
    d = depth((jax.tree_util.DictKey("bert"), jax.tree_util.DictKey("layers")), scanned, 3)
    np.testing.assert_array_equal(np.ravel(d), [1, 2, 3])


def test_layer_decay_scales_each_layer():
    moved = _step_sizes(_params(), optim.make_optimizer(_optim_cfg(layer_decay=0.5), 10, n_layers=3))
    lr = 1e-2  # Adam's first step moves every weight by the learning rate
    assert moved["head"] == pytest.approx(lr, rel=1e-4)
    for i in range(3):
        assert moved[i] == pytest.approx(lr * 0.5 ** (3 - i), rel=1e-4)
    assert moved["embeddings"] == pytest.approx(lr * 0.5 ** 4, rel=1e-4)


def test_gradual_unfreezing():
    tx = optim.make_optimizer(_optim_cfg(unfreeze_top_layers=1, unfreeze_every=2), 10, n_layers=3)
    first = _step_sizes(_params(), tx, steps=2)  # steps 0 and 1: head and top layer only
    assert first["head"] > 0 and first[2] > 0
    assert first[1] == first[0] == first["embeddings"] == 0.0
    later = _step_sizes(_params(), tx, steps=3)  # step 2 unfreezes layer 1 (index 1)
    assert later[1] > 0 and later[0] == later["embeddings"] == 0.0


def test_weight_decay_skips_biases_and_layer_norms():
    mask = optim.decay_mask(_params())
    assert mask["bert"]["layer_0"]["intermediate"]["kernel"]
    assert mask["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert not mask["bert"]["layer_0"]["intermediate"]["bias"]
    assert not mask["bert"]["layer_0"]["attention_ln"]["scale"]
    assert not mask["bert"]["embeddings"]["LayerNorm"]["bias"]
