"""Packed documents: segment ids keep them apart in every attention implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from flax_lm.training import train
from flax_lm.ops.attention import dot_product_attention
from flax_lm.data import lm_data
from flax_lm.models import build_model

EOS = 0


def test_document_segments_restart_at_each_end_of_text():
    inputs = np.array([[5, 6, EOS, 7, 8, 9, EOS, 4], [EOS, 1, 2, 3, 4, 5, 6, 7]], np.int32)
    out = lm_data.document_segments(inputs, EOS)
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 2, 2, 2, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])


@pytest.mark.parametrize("implementation", ["reference", "explicit", "xla"])
def test_attention_does_not_cross_segments(implementation):
    """Each document of a packed row gives what it gives alone (causal and bidirectional)."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32) for _ in range(3))
    segments = jnp.asarray([[1] * 5 + [2] * 4 + [3] * 3, [1] * 12], jnp.int32)
    for causal in (True, False):
        packed = dot_product_attention(q, k, v, causal=causal, segment_ids_BxT=segments,
                                       implementation=implementation)
        for lo, hi in ((0, 5), (5, 9), (9, 12)):
            alone = dot_product_attention(q[:1, lo:hi], k[:1, lo:hi], v[:1, lo:hi], causal=causal,
                                          implementation=implementation)
            np.testing.assert_allclose(packed[:1, lo:hi], alone, atol=1e-6)
        whole = dot_product_attention(q[1:], k[1:], v[1:], causal=causal, implementation=implementation)
        np.testing.assert_allclose(packed[1:], whole, atol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_tokens_logits_ignore_the_other_documents_of_its_row(scan_layers):
    cfg = tiny_config(model=dict(scan_layers=scan_layers))
    model = build_model(cfg.model)
    rng = np.random.default_rng(1)
    row = rng.integers(1, 512, (1, 32)).astype(np.int32)
    row[0, 12] = EOS  # the second document starts at 12
    changed = row.copy()
    changed[0, 13:] = rng.integers(1, 512, 19)  # another second document
    params = model.init(jax.random.key(0), row)["params"]

    def logits(inputs):
        packed = lm_data.document_segments(inputs, EOS)
        return model.apply({"params": params}, inputs, segment_ids_BxT=packed["segment_ids"],
                           position_ids_BxT=packed["positions"])

    first, first_changed = logits(row)[0, :12], logits(changed)[0, :12]
    np.testing.assert_array_equal(first, first_changed)
    # the second document (from its EOS) gives what it gives at the start of a row of its own
    second_alone = model.apply({"params": params}, row[:, 12:])[0]
    np.testing.assert_allclose(logits(row)[0, 12:], second_alone, atol=2e-5)
    # without segment ids the first document's tokens are still causal, but the second's see the first
    assert not np.allclose(model.apply({"params": params}, row)[0, 12:], second_alone, atol=1e-3)


def test_segments_packing_trains(tmp_path, shakespeare):
    cfg = tiny_config(data=dict(packing="segments"), train=dict(steps=20, eval_every=20))
    assert train.train(cfg, tmp_path)["loss"] < 5.8
