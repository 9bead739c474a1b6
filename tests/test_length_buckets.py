"""Dynamic padding and length grouping: batches cut to their longest example change no number."""

import numpy as np
import pytest
from conftest import SHARED_DATA

from flax_lm.config import load as config
from flax_lm.data import length_buckets, lm_data
from flax_lm.errors import UserError
from flax_lm.training.train import train


def test_buckets_are_powers_of_two_then_the_full_length():
    assert length_buckets.bucket_lengths(64) == (16, 32, 64)
    assert length_buckets.bucket_lengths(100) == (16, 32, 64, 100)
    assert length_buckets.bucket_lengths(8) == (8,)
    assert [length_buckets.bucket_for(n, (16, 32, 64)) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]


def test_load_batch_cuts_per_token_arrays_to_the_longest_of_the_whole_batch():
    class Split:
        padding = length_buckets.make(np.array([[1] * 5 + [0] * 59, [1] * 20 + [0] * 44, [1] * 64]), ("labels",),
                                      enabled=True)

        def batch(self, indices, epoch=0):
            return {"input_ids": np.ones((len(indices), 64)), "labels": np.ones((len(indices), 64)),
                    "weights": np.ones(len(indices))}

    split = Split()
    assert length_buckets.load_batch(split, np.array([0]))["input_ids"].shape == (1, 16)
    # this process holds example 0, but the global batch has a 20-token example: all processes cut to 32
    cut = length_buckets.load_batch(split, np.array([0]), whole_batch=np.array([0, 1]))
    assert cut["input_ids"].shape == cut["labels"].shape == (1, 32) and cut["weights"].shape == (1,)
    assert length_buckets.load_batch(split, np.array([2, 0]))["labels"].shape == (2, 64)


def test_grouped_order_is_a_shuffled_permutation_of_similar_length_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000)
    order = rng.permutation(1000)
    grouped = length_buckets.grouped_order(order, lengths, 8, np.random.default_rng(1), group_batches=10)
    assert sorted(grouped.tolist()) == list(range(1000))
    np.testing.assert_array_equal(grouped[-(1000 % 8):] if 1000 % 8 else [], order[1000 - 1000 % 8:])
    spread = [np.ptp(lengths[b]) for b in grouped[:992].reshape(-1, 8)]
    random_spread = [np.ptp(lengths[b]) for b in order[:992].reshape(-1, 8)]
    assert np.mean(spread) < np.mean(random_spread) / 4
    # batches are not in length order: training does not see a short-to-long curriculum
    means = [lengths[b].mean() for b in grouped[:992].reshape(-1, 8)]
    assert not (np.all(np.diff(means) >= 0) or np.all(np.diff(means) <= 0))


def test_grouped_iterator_resumes_exactly_and_refuses_a_changed_grouping():
    lengths = np.random.default_rng(3).integers(1, 60, size=50)
    full = [lm_data.BatchIterator(50, 4, seed=1, lengths=lengths) for _ in range(2)]
    expected = [full[0].next_indices() for _ in range(30)]
    head = [full[1].next_indices() for _ in range(17)]
    resumed = lm_data.BatchIterator(50, 4, seed=1, lengths=lengths)
    resumed.restore(full[1].state())
    np.testing.assert_array_equal(np.concatenate(head + [resumed.next_indices() for _ in range(13)]),
                                  np.concatenate(expected))
    with pytest.raises(UserError, match="grouped_by_length"):
        lm_data.BatchIterator(50, 4, seed=1).restore(full[1].state())


@pytest.mark.parametrize("recipe,data", [("sst2", "sst2"), ("conll_ner", "conll2003")])
def test_dynamic_padding_trains_and_evaluates_as_full_padding(tmp_path, recipe, data):
    """Same steps, same examples: only the padding differs, so losses and metrics agree."""
    if not (SHARED_DATA / data).is_dir():
        pytest.skip("shared data not found")
    if data == "sst2":
        rows = (SHARED_DATA / data / "train.tsv").read_text().splitlines()
        train_file, dev_file = tmp_path / "train.tsv", tmp_path / "dev.tsv"
        train_file.write_text("\n".join(rows[:201]) + "\n")
        dev_file.write_text("\n".join(rows[:1] + rows[201:262]) + "\n")
    else:
        sentences = (SHARED_DATA / data / "train.txt").read_text().split("\n\n")
        train_file, dev_file = tmp_path / "train.txt", tmp_path / "dev.txt"
        train_file.write_text("\n\n".join(sentences[:150]) + "\n")
        dev_file.write_text("\n\n".join(sentences[150:210]) + "\n")
    results = {}
    for dynamic in (True, False):
        cfg = config.load(recipe, [
            "--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=2",
            "--config.model.d_ff=64", "--config.model.vocab_size=400", "--config.model.dropout=0.0",
            "--config.train.batch_size=8", "--config.train.steps=4", "--config.train.eval_every=100",
            "--config.train.eval_batches=0", "--config.train.progress_bar=false", "--config.optim.warmup_steps=1",
            f"--config.data.train={train_file}", f"--config.data.validation={dev_file}", "--config.data.test=",
            f"--config.data.dynamic_padding={dynamic}", "--config.data.group_by_length=false"])
        results[dynamic] = train(cfg, tmp_path / f"dynamic_{dynamic}")
    assert results[True].keys() == results[False].keys()
    for key, value in results[False].items():
        assert results[True][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
