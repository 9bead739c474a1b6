"""Corpus, tokenizer, packing and the resumable batch iterator."""

import numpy as np
import pytest

from flax_lm.data import corpus, lm_data
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError


def test_default_corpus_is_the_stdlib_and_needs_no_download():
    files = corpus.source_files("default")
    assert len(files) > 50 and all(f.suffix == ".py" for f in files)
    docs = corpus.read_documents("default", max_bytes=100_000)
    assert sum(map(len, docs)) == 100_000


def test_globs_and_comma_lists(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(f"text of {name}\n")
    files = corpus.source_files(f"{tmp_path}/*.txt,{tmp_path}/c.md")
    assert [f.name for f in files] == ["a.txt", "b.txt", "c.md"]


@pytest.mark.parametrize("setup, message", [
    (lambda d: f"{d}/none/*.txt", "no file matches"),
    (lambda d: (d / "e.txt").write_text("  \n") and str(d / "e.txt"), "is empty"),
    (lambda d: (d / "b.txt").write_bytes(b"ok \xff\xfe bad") and str(d / "b.txt"), "is not UTF-8 text"),
    (lambda d: " , ", "data.source is empty"),
])
def test_bad_sources_are_one_clear_error(tmp_path, setup, message):
    with pytest.raises(UserError, match=message):
        corpus.read_documents(setup(tmp_path))


def test_trained_tokenizer_loads_in_transformers_with_identical_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    docs = corpus.read_documents("default", max_bytes=300_000)
    tok = tokenizer_lib.train_bpe(docs, vocab_size=600)
    assert tok.get_vocab_size() == 600
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = "def f(x):\n    return x  # ünïcode\n"
    assert hf(text)["input_ids"] == tok.encode(text).ids
    assert tok.decode(tok.encode(text).ids) == text


def test_windows_shift_targets_by_one():
    tokens = np.arange(100, dtype=np.int32)
    batch = lm_data.windows(tokens, np.array([0, 3]), seq_len=8)
    np.testing.assert_array_equal(batch["inputs"][1], np.arange(24, 32))
    np.testing.assert_array_equal(batch["targets"][1], np.arange(25, 33))
    assert lm_data.num_windows(tokens, 8) == 12


def _take(it, n):
    return [it.next_indices() for _ in range(n)]


def test_iterator_is_seeded_covers_each_epoch_and_reshuffles():
    it = lm_data.BatchIterator(num_examples=10, global_batch=3, seed=5)
    epoch0, epoch1 = _take(it, 3), _take(it, 3)
    assert len(set(np.concatenate(epoch0))) == 9  # one example dropped per epoch
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))
    again = lm_data.BatchIterator(num_examples=10, global_batch=3, seed=5)
    np.testing.assert_array_equal(np.concatenate(_take(again, 6)), np.concatenate(epoch0 + epoch1))


def test_the_epoch_order_is_the_one_earlier_checkpoints_resume_into():
    # Generator.permutation's order (int64), which the iterator drew before it kept int32 indices
    it = lm_data.BatchIterator(num_examples=1000, global_batch=100, seed=7)
    for epoch in (0, 1):
        expected = np.random.default_rng([7, epoch]).permutation(1000)
        np.testing.assert_array_equal(np.concatenate(_take(it, 10)), expected)


def test_iterator_resumes_exactly_mid_epoch():
    full = _take(lm_data.BatchIterator(50, 4, seed=1), 30)
    first = lm_data.BatchIterator(50, 4, seed=1)
    head = _take(first, 17)
    resumed = lm_data.BatchIterator(50, 4, seed=1)
    resumed.restore(first.state())
    np.testing.assert_array_equal(np.concatenate(head + _take(resumed, 13)), np.concatenate(full))


def test_processes_take_disjoint_slices_of_each_global_batch():
    single = lm_data.BatchIterator(40, 8, seed=2).next_indices()
    parts = [lm_data.BatchIterator(40, 8, seed=2, process_index=i, process_count=4).next_indices() for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), single)


def test_restore_refuses_a_different_batch_size():
    state = lm_data.BatchIterator(50, 4, seed=1).state()
    with pytest.raises(UserError, match="global_batch"):
        lm_data.BatchIterator(50, 8, seed=1).restore(state)


@pytest.mark.parametrize("end, expected", [("<|endoftext|>", 0), ("<|end_of_text|>", 0), ("</s>", 0), ("<eos>", None)])
def test_the_end_of_text_token_of_gpt2_llama3_and_llama2_tokenizers(end, expected):
    from tokenizers import Tokenizer, models
    tokenizer = Tokenizer(models.WordLevel({end: 0, "hello": 1, "[UNK]": 2}, unk_token="[UNK]"))
    if expected is None:
        with pytest.raises(UserError, match="no end-of-text token"):
            tokenizer_lib.eos_id(tokenizer)
    else:
        assert tokenizer_lib.eos_id(tokenizer) == expected


def test_too_small_corpus_is_a_user_error():
    tok = tokenizer_lib.train_bpe(["tiny text"], vocab_size=300)
    with pytest.raises(UserError, match="too few"):
        lm_data.tokenize_and_split(["tiny text"], tok, 0.1, seq_len=64)
