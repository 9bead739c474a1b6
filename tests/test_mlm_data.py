"""BERT pre-training data: WordPiece tokenizer, MLM masking statistics, NSP pairs and dynamic masks."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from flax_lm.data import corpus, masking, mlm_data, wordpiece
from flax_lm.data import tokenizer as bpe_lib
from flax_lm.errors import UserError

SAMPLES = ["Héllo Wörld, DON'T stop! 你好 naïve café x1234",
           "def f(x):\n    return x  # ünïcode",
           "  Multiple   spaces\tand\ttabs.  "]


@pytest.fixture(scope="module")
def stdlib_docs():
    return corpus.read_documents("default", max_bytes=150_000)


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def trained(request, stdlib_docs):
    return wordpiece.train_wordpiece(stdlib_docs, vocab_size=700, lowercase=request.param), request.param


def test_wordpiece_training_is_deterministic(stdlib_docs):
    """The `tokenizers` trainer numbers `##` pieces in hash-map order, which once made two trainings
    on the same text disagree on ~100 of 700 ids (and on which merges won ties)."""
    vocabs = [wordpiece.train_wordpiece(stdlib_docs[:40], vocab_size=700, lowercase=False).get_vocab()
              for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs[1:])


def _encodings(tok_ids, hf, text, pair=None):
    enc = hf(text, pair, return_token_type_ids=True) if pair else hf(text, return_token_type_ids=True)
    return (enc["input_ids"], enc["token_type_ids"]) == tok_ids


def test_wordpiece_json_and_vocab_txt_match_transformers(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok, lowercase = trained
    assert [tok.id_to_token(i) for i in range(5)] == list(wordpiece.BERT_SPECIALS)
    assert tok.get_vocab_size() == 700
    tok.save(str(tmp_path / "tokenizer.json"))
    from_object = transformers.BertTokenizerFast(tokenizer_object=Tokenizer.from_file(str(tmp_path / "tokenizer.json")))
    from_file = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    # A vocab.txt alone, as released BERT checkpoints ship it. (transformers 5 ignores a `vocab_file=`
    # keyword and silently builds an empty vocabulary; from_pretrained on the folder is the real route.)
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    (vocab_dir / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    from_vocab = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir), do_lower_case=lowercase)
    ours_from_vocab = wordpiece.load_vocab(vocab_dir / "vocab.txt", lowercase=lowercase)
    for text in SAMPLES:
        single, pair = tok.encode(text), tok.encode(text, "and a second one")
        assert single.ids[0] == 2 and single.ids[-1] == 3 and pair.type_ids[-1] == 1
        for hf in (from_object, from_file, from_vocab):
            assert _encodings((single.ids, single.type_ids), hf, text)
            assert _encodings((pair.ids, pair.type_ids), hf, text, "and a second one")
        assert ours_from_vocab.encode(text, "and a second one").ids == pair.ids
        assert from_vocab.tokenize(text) == single.tokens[1:-1]
    # Cased keeps case and accents apart; uncased folds both.
    same = tok.encode("Hello Cafe").ids == tok.encode("hello café").ids
    assert same == lowercase


def test_load_vocab_and_special_tokens_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        wordpiece.load_vocab(tmp_path / "missing.txt", lowercase=True)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(UserError, match=r"is not a BERT vocab.txt: it lacks \[CLS\] \[SEP\]"):
        wordpiece.load_vocab(tmp_path / "vocab.txt", lowercase=True)
    (tmp_path / "latin1.txt").write_bytes("[UNK]\n[CLS]\n[SEP]\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        wordpiece.load_vocab(tmp_path / "latin1.txt", lowercase=True)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(UserError, match=r"lacks the special tokens \[MASK\] "):
        wordpiece.special_tokens(wordpiece.load_vocab(tmp_path / "vocab.txt", lowercase=True))


def test_special_tokens_of_bert_and_roberta_vocabularies(stdlib_docs, trained):
    assert wordpiece.special_tokens(trained[0]) == wordpiece.SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
    bpe = bpe_lib.train_bpe(stdlib_docs[:3], vocab_size=400)
    bpe.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    ids = wordpiece.special_tokens(bpe)
    assert [bpe.id_to_token(i) for i in ids] == ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    partial = bpe_lib.train_bpe(stdlib_docs[:1], vocab_size=300)
    with pytest.raises(UserError, match=r"lacks the special tokens \[PAD\] \[UNK\] \[CLS\] \[SEP\] \[MASK\] "):
        wordpiece.special_tokens(partial)
    partial.add_special_tokens(["<s>", "</s>"])
    with pytest.raises(UserError, match=r"lacks the special tokens <pad> <unk> <mask> "):
        wordpiece.special_tokens(partial)


def _random_sequences(n, rng, vocab=30_000, max_len=128):
    """Sequences like MLM rows: [CLS]=2 ... [SEP]=3 then padding 0; word starts at random."""
    out = []
    for _ in range(n):
        length = int(rng.integers(8, max_len + 1))
        ids = np.zeros(max_len, np.int32)
        ids[0], ids[1:length - 1], ids[length - 1] = 2, rng.integers(5, vocab, length - 2), 3
        candidate = np.zeros(max_len, bool)
        candidate[1:length - 1] = True
        out.append((ids, candidate, rng.random(max_len) < 0.6))
    return out


@pytest.mark.parametrize("whole_word", [False, True])
def test_masking_statistics(whole_word):
    rng = np.random.default_rng(0)
    vocab, P = 30_000, 40
    n_candidates = n_selected = n_budget = n_mask = n_same = 0
    for ids, candidate, word_start in _random_sequences(20_000, rng, vocab):
        inputs, positions, targets, weights = masking.mask_tokens(
            ids, candidate, rng, mask_id=4, vocab_size=vocab, max_predictions=P,
            word_start_T=word_start if whole_word else None)
        n = int(weights.sum())
        chosen = positions[:n]
        assert weights[:n].all() and not weights[n:].any() and not positions[n:].any() and not targets[n:].any()
        assert np.all(np.diff(chosen) > 0) and candidate[chosen].all()   # sorted, never special or padding
        np.testing.assert_array_equal(targets[:n], ids[chosen])
        untouched = np.ones(len(ids), bool)
        untouched[chosen] = False
        np.testing.assert_array_equal(inputs[untouched], ids[untouched])
        budget = masking.num_to_predict(int(candidate.sum()), 0.15, P)
        if whole_word:
            # Words: a start (or a gap) opens one; all-or-nothing, and greedy up to the budget.
            word_id = np.cumsum(word_start | ~np.roll(candidate, 1)) * candidate
            selected = np.zeros(len(ids), bool)
            selected[chosen] = True
            for w in np.unique(word_id[candidate]):
                in_word = selected[word_id == w]
                assert in_word.all() or not in_word.any()
                if not in_word.any():
                    assert n + len(in_word) > budget
            assert n <= budget
        else:
            assert n == budget
        n_candidates, n_selected, n_budget = n_candidates + candidate.sum(), n_selected + n, n_budget + budget
        n_mask += int((inputs[chosen] == 4).sum())
        n_same += int((inputs[chosen] == ids[chosen]).sum())
    assert abs(n_selected / n_candidates - 0.15) < (0.01 if whole_word else 0.002)
    assert n_selected / n_budget > (0.97 if whole_word else 1.0 - 1e-9)
    assert abs(n_mask / n_selected - 0.8) < 0.005
    assert abs(n_same / n_selected - 0.1) < 0.004
    assert abs((n_selected - n_mask - n_same) / n_selected - 0.1) < 0.004


def test_masking_caps_and_empty():
    rng = np.random.default_rng(1)
    ids = np.arange(100, dtype=np.int32)
    _, positions, _, weights = masking.mask_tokens(ids, np.ones(100, bool), rng, mask_id=4, vocab_size=100,
                                                   max_predictions=5)
    assert weights.sum() == 5 and len(positions) == 5
    _, _, _, weights = masking.mask_tokens(ids[:4], np.array([False, True, False, False]), rng, mask_id=4,
                                           vocab_size=100, max_predictions=3)
    assert weights.tolist() == [1, 0, 0]   # one candidate: still one prediction
    inputs, _, _, weights = masking.mask_tokens(ids[:4], np.zeros(4, bool), rng, mask_id=4, vocab_size=100,
                                                max_predictions=3)
    assert not weights.any() and (inputs == ids[:4]).all()


def _unmask(batch):
    ids = batch["input_ids"].copy()
    for row in range(len(ids)):
        n = int(batch["masked_weights"][row].sum())
        ids[row, batch["masked_positions"][row, :n]] = batch["masked_ids"][row, :n]
    return ids


@pytest.mark.parametrize("nsp", [True, False])
def test_batches_shapes_unmasking_and_reproducibility(stdlib_docs, trained, nsp):
    tok = trained[0]
    ds = mlm_data.MLMDataset(stdlib_docs, tok, max_len=48, seed=3, nsp=nsp, whole_word=True)
    assert len(ds) > 100 and ds.max_predictions == 8
    idx = np.array([7, 0, 55, 23])
    batch = ds.batch(idx, epoch=2)
    expect = {"input_ids": ((4, 48), np.int32), "token_type_ids": ((4, 48), np.int32),
              "attention_mask": ((4, 48), np.int32), "masked_positions": ((4, 8), np.int32),
              "masked_ids": ((4, 8), np.int32), "masked_weights": ((4, 8), np.float32), "weights": ((4,), np.float32)}
    if nsp:
        expect["next_sentence_label"] = ((4,), np.int32)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expect
    assert (batch["weights"] == 1).all() and (batch["masked_weights"].sum(1) >= 1).all()
    # Unmasking gives back the unmasked example; padding is [PAD] with attention 0.
    original = _unmask(batch)
    for row, i in enumerate(idx):
        ids_L, types_L, _ = ds.example(int(i))
        L = len(ids_L)
        np.testing.assert_array_equal(original[row, :L], ids_L)
        assert (original[row, L:] == 0).all() and batch["attention_mask"][row].sum() == L
        np.testing.assert_array_equal(batch["token_type_ids"][row, :L], types_L)
        sep = np.flatnonzero(ids_L == 3)
        assert ids_L[0] == 2 and ids_L[-1] == 3 and len(sep) == (2 if nsp else 1)
        # BERT's segment ids: [CLS] A [SEP] are 0, B [SEP] are 1.
        assert (types_L[:sep[0] + 1] == 0).all() and (types_L[sep[0] + 1:] == int(nsp)).all()
    # Same (epoch, index) -> same row whatever else is in the batch; another epoch -> another mask.
    again = ds.batch(np.array([23, 99, 7]), epoch=2)
    for key in batch:
        np.testing.assert_array_equal(again[key][[2, 0]], batch[key][[0, 3]])
    many = np.arange(64)
    e0, e1 = ds.batch(many, epoch=0), ds.batch(many, epoch=1)
    np.testing.assert_array_equal(_unmask(e0), _unmask(e1))
    differs = (e0["masked_positions"] != e1["masked_positions"]).any(1)
    assert differs.mean() > 0.9


def test_packing_keeps_every_token_in_order(stdlib_docs, trained):
    tok = trained[0]
    ds = mlm_data.MLMDataset(stdlib_docs, tok, max_len=40, seed=0, nsp=False, whole_word=False)
    lines = [line.strip() for d in stdlib_docs for line in d.splitlines() if line.strip()]
    stream = np.concatenate([e.ids for e in tok.encode_batch(lines, add_special_tokens=False)])
    pieces = [ds.example(i)[0] for i in range(len(ds))]
    assert all(len(p) <= 40 for p in pieces) and np.mean([len(p) for p in pieces]) > 30
    np.testing.assert_array_equal(np.concatenate([p[1:-1] for p in pieces]), stream)


def test_too_little_text_is_a_user_error(trained):
    tok = trained[0]
    with pytest.raises(UserError, match="too little for masked-LM examples"):
        mlm_data.MLMDataset(["", " \n \n"], tok, max_len=32, seed=0, nsp=False, whole_word=False)
    with pytest.raises(UserError, match="at least 2 documents"):
        mlm_data.MLMDataset(["one document\nwith two lines"], tok, max_len=32, seed=0, nsp=True, whole_word=False)


def _shakespeare_documents(path):
    """Tiny Shakespeare has no scene marks; blank lines separate speeches, mostly two to four lines.
    A speech is too short to be a BERT document (it would be one chunk, and single-sentence chunks
    are always NotNext), so a document is 20 consecutive speeches, about a page of dialogue."""
    speeches = [s for s in path.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    return ["\n".join(speeches[i:i + 20]) for i in range(0, len(speeches), 20)]


def _aligned_find(haystack: bytes, needle: bytes) -> bool:
    start = haystack.find(needle)
    while start >= 0 and start % 4:
        start = haystack.find(needle, start + 1)
    return start >= 0


def test_nsp_pairs_on_shakespeare(shakespeare, stdlib_docs):
    tok, max_len = wordpiece.train_wordpiece(stdlib_docs, vocab_size=700, lowercase=True), 64
    documents = _shakespeare_documents(shakespeare)
    ds = mlm_data.MLMDataset(documents, tok, max_len=max_len, seed=0, nsp=True, whole_word=True)
    batch = ds.batch(np.arange(len(ds)), epoch=0)
    labels = batch["next_sentence_label"]
    # Google's construction makes a chunk of one sentence always NotNext, hence a little over 1/2.
    assert 0.47 < labels.mean() < 0.56, labels.mean()
    # Every document's tokens as one stream, documents separated by -1, searched as int32 bytes.
    stream = []
    for d in documents:
        lines = [line.strip() for line in d.splitlines() if line.strip()]
        stream += [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)] + [[-1]]
    haystack = np.concatenate(stream).astype(np.int32).tobytes()
    original = _unmask(batch)
    n_checked, n_notnext_contiguous = 0, 0
    for row in range(0, len(ds), 3):
        ids = original[row, :batch["attention_mask"][row].sum()]
        sep = np.flatnonzero(ids == 3)
        a, b = ids[1:sep[0]], ids[sep[0] + 1:-1]
        assert len(a) and len(b) and len(a) + len(b) <= max_len - 3
        assert _aligned_find(haystack, a.tobytes()) and _aligned_find(haystack, b.tobytes())
        contiguous = _aligned_find(haystack, np.concatenate([a, b]).tobytes())
        if labels[row] == mlm_data.IS_NEXT and len(a) + len(b) < max_len - 3:   # untruncated: B follows A
            assert contiguous
            n_checked += 1
        n_notnext_contiguous += labels[row] == mlm_data.NOT_NEXT and contiguous
    assert n_checked > 100
    assert n_notnext_contiguous < 0.02 * len(range(0, len(ds), 3))
