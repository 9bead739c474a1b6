"""ELMo: the biLSTM's directions see only their own side, padding never reaches them, the
bidirectional LM trains and resumes from the command line, and a downstream model starts from a
pre-trained ELMo with its weights frozen and its scalar mix learning."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_lm.models import elmo
from flax_lm.training import optim

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"

CFG = elmo.ElmoConfig(vocab_size=60, max_len=16, d_model=8, n_layers=2, n_heads=1, d_ff=12, char_dim=4,
                      filters=((1, 4), (2, 4), (3, 8)), highway_layers=1, max_chars=8,
                      vocab=tuple(f"w{i}" for i in range(50)))

TINY = ["--config", "configs/elmo_tiny.py", "--config.model.d_model=32", "--config.model.d_ff=64",
        "--config.model.vocab_size=512", "--config.model.max_len=32", "--config.model.elmo_filters=1:8,2:8,3:16",
        "--config.model.elmo_max_chars=12", "--config.model.dropout=0.0", "--config.data.max_bytes=60000",
        "--config.train.batch_size=8", "--config.train.progress_bar=false", "--config.optim.warmup_steps=2",
        "--config.train.log_every=2", "--config.train.eval_every=100", "--config.train.checkpoint_every=100"]


def flax_lm(*args, timeout=400):
    return subprocess.run([sys.executable, "-m", "flax_lm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _ids(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, CFG.vocab_size, shape), jnp.int32)


def test_shapes_of_the_layers_and_the_lm():
    ids = _ids((3, 7))
    body = elmo.Elmo(CFG)
    layers = body.apply(body.init(jax.random.key(0), ids), ids)
    assert [x.shape for x in layers] == [(3, 7, 16)] * 3   # token encoder (both directions) + 2 biLSTM layers
    np.testing.assert_array_equal(layers[0][..., :8], layers[0][..., 8:])
    lm = elmo.ElmoBidirectionalLM(CFG)
    forward, backward, softmax = lm.apply(lm.init(jax.random.key(0), ids), ids)
    assert forward.shape == backward.shape == (3, 7, 8) and softmax.shape == (60, 8)


def test_char_table_spells_each_token_between_word_marks():
    table = elmo.char_table(("ab", "é"), 3, 6)
    assert table[0].tolist() == [elmo.BEGIN_OF_WORD, ord("a") + 1, ord("b") + 1, elmo.END_OF_WORD, 0, 0]
    assert table[1].tolist() == [elmo.BEGIN_OF_WORD, 0xC3 + 1, 0xA9 + 1, elmo.END_OF_WORD, 0, 0]   # UTF-8 bytes
    assert table[2].tolist() == [elmo.BEGIN_OF_WORD, ord("2") + 1, elmo.END_OF_WORD, 0, 0, 0]   # past the vocab


def test_padding_never_reaches_either_direction():
    """Row 0 of a padded batch has 5 real tokens: its outputs there equal those of the 5 tokens alone,
    whatever the padding holds, so the backward LSTM starts at each sequence's own last token."""
    body = elmo.Elmo(CFG)
    ids = _ids((2, 9))
    params = body.init(jax.random.key(0), ids)
    lengths = jnp.asarray([5, 9])
    padded = body.apply(params, ids, lengths)
    other_padding = body.apply(params, ids.at[0, 5:].set(3), lengths)
    alone = body.apply(params, ids[:1, :5])
    for layer, other, single in zip(padded, other_padding, alone):
        np.testing.assert_allclose(layer[0, :5], single[0], atol=1e-6)
        np.testing.assert_allclose(other[0, :5], single[0], atol=1e-6)


def test_forward_never_sees_future_tokens_and_backward_never_past_ones():
    lm = elmo.ElmoBidirectionalLM(CFG)
    ids = _ids((1, 8))
    params = lm.init(jax.random.key(0), ids)
    k = 4
    changed = ids.at[0, k].set((ids[0, k] + 1) % CFG.vocab_size)
    f0, b0 = lm.apply(params, ids, logits=True)
    f1, b1 = lm.apply(params, changed, logits=True)
    np.testing.assert_array_equal(f0[0, :k], f1[0, :k])
    np.testing.assert_array_equal(b0[0, k + 1:], b1[0, k + 1:])
    assert not np.allclose(f0[0, k:], f1[0, k:]) and not np.allclose(b0[0, :k + 1], b1[0, :k + 1])


def test_frozen_updates_are_zero_weight_decay_included():
    params = {"elmo": {"w": jnp.ones((2, 2))}, "scalar_mix": {"weights": jnp.ones(3)}}
    tx = optax.chain(optax.adamw(0.1, weight_decay=0.5),
                     optim.zero_updates_except(lambda p: elmo.trainable_mask(p, frozen=True)))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["elmo"]["w"], params["elmo"]["w"])
    assert not np.allclose(new["scalar_mix"]["weights"], params["scalar_mix"]["weights"])


def test_bad_filters_are_one_line():
    done = flax_lm("train", *TINY, "--config.model.elmo_filters=3x16", "--workdir", "/nonexistent/never")
    assert done.returncode != 0
    assert "model.elmo_filters" in done.stderr and "Traceback" not in done.stderr


def _losses(workdir):
    return [r["train/loss"] for r in map(json.loads, Path(workdir, "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An ELMo pre-trained 24 steps, in two runs (the second resumes the first)."""
    work = str(tmp_path_factory.mktemp("elmo") / "lm")
    first = flax_lm("train", *TINY, "--config.train.steps=12", "--workdir", work)
    assert first.returncode == 0, first.stderr
    more = flax_lm("train", *TINY, "--config.train.steps=24", "--workdir", work)
    assert more.returncode == 0, more.stderr
    return work, more.stdout


def test_bidirectional_lm_trains_and_resumes(pretrained):
    work, stdout = pretrained
    assert "resumed from step 12" in stdout
    losses = _losses(work)
    refused = flax_lm("generate", "--workdir", work, "--prompt", "def ")
    assert refused.returncode != 0 and "does not generate text" in refused.stderr and "Traceback" not in refused.stderr
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3, losses


@pytest.mark.skipif(not CONLL.is_dir(), reason="needs the shared CoNLL-2003 copy")
def test_ner_from_pretrained_elmo_keeps_it_frozen_and_learns_the_mix(pretrained, tmp_path):
    from flax_lm.workdir.run import load_run
    work, _ = pretrained
    for split, name, count in (("train", "train.txt", 64), ("dev", "dev.txt", 16), ("test", "test.txt", 16)):
        sentences = (CONLL / name).read_text().split("\n\n")
        (tmp_path / f"{split}.txt").write_text("\n\n".join(s for s in sentences[:count + 1] if "DOCSTART" not in s))
    ner = str(tmp_path / "ner")
    done = flax_lm("train", "--config", "configs/conll_ner_elmo.py", f"--config.train.init_from={work}",
                   f"--config.data.train={tmp_path}/train.txt", f"--config.data.validation={tmp_path}/dev.txt",
                   f"--config.data.test={tmp_path}/test.txt", "--config.data.seq_len=32", "--config.train.steps=6",
                   "--config.train.batch_size=8", "--config.optim.warmup_steps=1", "--config.optim.learning_rate=0.05",
                   "--config.train.eval_every=6", "--config.train.progress_bar=false", "--workdir", ner)
    assert done.returncode == 0, done.stderr
    _, source = load_run(work)
    run, tuned = load_run(ner)
    assert run.cfg.model.d_model == 32   # the architecture came from the source
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        source.params["elmo"], tuned.params["elmo"])
    assert all(jax.tree.leaves(same))   # frozen: bit-unchanged after 6 steps
    mix = np.asarray(tuned.params["scalar_mix"]["weights"])
    assert not np.allclose(mix, 0.0) and float(tuned.params["scalar_mix"]["gamma"]) != 1.0


@pytest.mark.parametrize("head", [elmo.ElmoTokenClassification, elmo.ElmoSequenceClassification])
def test_downstream_heads_take_encoder_inputs(head):
    cfg = elmo.ElmoConfig(**{**CFG.__dict__, "num_labels": 5})
    ids = _ids((2, 6))
    mask = jnp.asarray([[1] * 6, [1] * 3 + [0] * 3])
    model = head(cfg)
    params = model.init(jax.random.key(0), ids)["params"]
    assert set(params) >= {"elmo", "scalar_mix", "classifier"}
    logits = model.apply({"params": params}, ids, jnp.zeros_like(ids), mask)
    assert logits.shape == ((2, 6, 5) if head is elmo.ElmoTokenClassification else (2, 5))
