"""Encoder-decoder data: T5's Unigram tokenizer and sentinels, span corruption, and text pairs
(parallel Multi30k files and tables) encoded into seq2seq batches."""

import json
import unicodedata

import numpy as np
import pytest
from conftest import SHARED_DATA
from tokenizers import processors

from flax_lm.data import length_buckets, seq2seq_data, span_corruption, unigram
from flax_lm.data import tokenizer as bpe
from flax_lm.errors import UserError

MULTI30K = SHARED_DATA / "multi30k"
VOCAB = 1000
PREFIX = "translate English to German: "


def _lines(path, count=None):
    return path.read_text(encoding="utf-8").splitlines()[:count]


@pytest.fixture(scope="module")
def t5_tok():
    """A T5 tokenizer trained on 3,000 English and 3,000 German Multi30k captions."""
    if not MULTI30K.is_dir():
        pytest.skip(f"shared data not found at {MULTI30K}")
    return unigram.train_unigram(_lines(MULTI30K / "train.en", 3000) + _lines(MULTI30K / "train.de", 3000), VOCAB)


@pytest.fixture(scope="module")
def val_pairs(t5_tok):
    return seq2seq_data.read_pairs(MULTI30K / "val", "en", "de")


# ---------------------------------------------------------------- tokenizer


def test_unigram_ids_are_t5s(t5_tok):
    assert t5_tok.get_vocab_size() == VOCAB
    assert unigram.special_ids(t5_tok) == (0, 1, 2)
    sentinels = unigram.sentinel_ids(t5_tok, 100)
    np.testing.assert_array_equal(sentinels, np.arange(VOCAB - 1, VOCAB - 101, -1))
    assert sentinels.dtype == np.int32 and t5_tok.id_to_token(VOCAB - 1) == "<extra_id_0>"
    assert t5_tok.id_to_token(VOCAB - 100) == "<extra_id_99>"
    # every learned piece lies between the specials and the sentinels
    assert all(3 <= i < VOCAB - 100 for t, i in t5_tok.get_vocab().items() if t not in ("<pad>", "</s>", "<unk>")
               and not t.startswith("<extra_id_"))
    encoding = t5_tok.encode("A dog <extra_id_0> the park.")
    assert encoding.ids[-1] == 1 and encoding.ids.count(VOCAB - 1) == 1   # one id for the sentinel, then </s>
    with pytest.raises(UserError, match="<extra_id_100>"):
        unigram.sentinel_ids(t5_tok, 101)


def test_unigram_round_trips_real_sentences(t5_tok):
    sentences = _lines(MULTI30K / "val.en") + _lines(MULTI30K / "val.de")
    encodings = t5_tok.encode_batch(sentences)
    known = [(s, e) for s, e in zip(sentences, encodings) if 2 not in e.ids]   # <unk>: a character never seen
    assert len(known) > 0.9 * len(sentences)
    for sentence, encoding in known:   # text comes back NFKC-normalized, runs of whitespace as one space
        assert t5_tok.decode(encoding.ids) == " ".join(unicodedata.normalize("NFKC", sentence).split())
    assert sum(t5_tok.decode(e.ids) == s for s, e in known) > 0.99 * len(known)
    assert all(e.tokens[0].startswith("▁") and e.ids[-1] == 1 for e in encodings)
    words = sum(len(s.split()) for s in sentences)
    assert words < sum(len(e.ids) for e in encodings) < 3 * words   # sub-words, not characters


def test_unigram_matches_transformers(t5_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    t5_tok.save(str(tmp_path / "tokenizer.json"))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="</s>",
                                              pad_token="<pad>", unk_token="<unk>")
    sentences = _lines(MULTI30K / "test.en", 200) + _lines(MULTI30K / "test.de", 200) + ["Two  <extra_id_3> dogs\t."]
    ours = [e.ids for e in t5_tok.encode_batch(sentences)]
    assert hf(sentences)["input_ids"] == ours
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2)
    assert hf.batch_decode(ours, skip_special_tokens=True)[:3] == [t5_tok.decode(ids) for ids in ours[:3]]


def test_unigram_is_reproducible_and_small_corpora_give_smaller_vocabularies(t5_tok):
    texts = _lines(MULTI30K / "train.en", 500)
    assert unigram.train_unigram(texts, 600).to_str() == unigram.train_unigram(texts, 600).to_str()
    tiny = unigram.train_unigram(["a cat sat", "a dog ran", "the cat ran"], VOCAB, extra_ids=10)
    size = tiny.get_vocab_size()
    assert size < VOCAB and tiny.id_to_token(size - 1) == "<extra_id_0>"
    np.testing.assert_array_equal(unigram.sentinel_ids(tiny, 10), np.arange(size - 1, size - 11, -1))
    with pytest.raises(UserError, match="model.vocab_size"):
        unigram.train_unigram(["a b"], 50, extra_ids=100)


def test_special_ids_refuse_a_gpt2_tokenizer():
    gpt2 = bpe.train_bpe(["some text to learn from"] * 4, 300)
    with pytest.raises(UserError, match="lacks <pad> </s> <unk>"):
        unigram.special_ids(gpt2)


# ---------------------------------------------------------------- span corruption

SENTINELS = np.arange(999, 899, -1, dtype=np.int32)   # <extra_id_0> is 999, as in a vocabulary of 1000
EOS = 1


def test_corrupt_hand_checked():
    tokens = np.arange(10, 20)
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], bool)
    inputs, targets = span_corruption.corrupt(tokens, mask, SENTINELS, EOS)
    np.testing.assert_array_equal(inputs, [10, 11, 999, 14, 15, 16, 998, 18, 19, EOS])
    np.testing.assert_array_equal(targets, [999, 12, 13, 998, 17, EOS])
    assert inputs.dtype == targets.dtype == np.int32
    # T5's shape of mask: a non-noise span first, a noise span last
    mask = np.array([0, 1, 1, 1, 0, 0, 1], bool)
    inputs, targets = span_corruption.corrupt(tokens[:7], mask, SENTINELS, EOS)
    np.testing.assert_array_equal(inputs, [10, 999, 14, 15, 998, EOS])
    np.testing.assert_array_equal(targets, [999, 11, 12, 13, 998, 16, EOS])
    # any other mask keeps the pair consistent: a span at the start, text at the end
    inputs, targets = span_corruption.corrupt(tokens[:6], np.array([1, 1, 0, 0, 1, 0], bool), SENTINELS, EOS)
    np.testing.assert_array_equal(inputs, [999, 12, 13, 998, 15, EOS])
    np.testing.assert_array_equal(targets, [999, 10, 11, 998, 14, EOS])
    with pytest.raises(ValueError, match="sentinels"):
        span_corruption.corrupt(tokens, np.arange(10) % 2 == 1, SENTINELS[:3], EOS)


def test_noise_mask_density_and_span_length_hold():
    rng = np.random.default_rng(0)
    masks = np.stack([span_corruption.noise_mask(512, 0.15, 3.0, rng) for _ in range(2000)])
    assert masks.shape == (2000, 512) and masks.dtype == bool
    assert abs(masks.mean() - 0.15) < 0.005
    assert (masks.sum(axis=1) == round(512 * 0.15)).all()
    starts = masks & ~np.pad(masks, ((0, 0), (1, 0)))[:, :-1]
    spans = starts.sum(axis=1)
    assert (spans == round(77 / 3.0)).all()
    assert abs(masks.sum() / spans.sum() - 3.0) < 0.1
    assert not masks[:, 0].any() and masks[:, -1].all()   # a non-noise span first, a noise span last
    lengths = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], masks[0].astype(int), [0]]))))[::2]
    assert lengths.min() >= 1 and len(set(lengths.tolist())) > 1   # random partitions, not equal spans
    assert masks[:, 1:].any(axis=0).all()   # every position but the first is corrupted in some window
    for length in (2, 3, 7):   # short windows still get one noise token and keep one
        mask = span_corruption.noise_mask(length, 0.15, 3.0, rng)
        assert mask.sum() == 1 and not mask.all()
    assert not span_corruption.noise_mask(1, 0.15, 3.0, rng).any()


def test_lengths_for_fill_the_inputs_exactly():
    assert span_corruption.lengths_for(512, 0.15, 3.0) == (568, 114)   # T5's numbers
    rng = np.random.default_rng(1)
    for inputs_length in (4, 5, 16, 63, 64, 100, 128, 300):
        for density, span in ((0.15, 3.0), (0.3, 2.0), (0.15, 1.0)):
            tokens_length, targets_length = span_corruption.lengths_for(inputs_length, density, span)
            mask = span_corruption.noise_mask(tokens_length, density, span, rng)
            inputs, targets = span_corruption.corrupt(np.arange(tokens_length), mask, SENTINELS, EOS)
            assert (len(inputs), len(targets)) == (inputs_length, targets_length), (inputs_length, density, span)


def _reassemble(inputs, targets, sentinels=SENTINELS):
    """The raw tokens of a corrupted window: each sentinel of `inputs` replaced by what follows it in `targets`."""
    sentinels = set(sentinels.tolist())
    spans, current = {}, None
    for t in targets.tolist()[:-1]:   # both end with the end token
        if t in sentinels:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    return [x for t in inputs.tolist()[:-1] for x in (spans[t] if t in sentinels else [t])]


def test_span_corruption_dataset_batches():
    stream = np.arange(1000, 1000 + 20_000, dtype=np.int32)   # ids apart from the sentinels'
    stream[49::50] = EOS   # documents of 49 tokens, each ended by EOS
    ds = span_corruption.SpanCorruptionDataset(stream, 64, 0.15, 3.0, SENTINELS, EOS, pad=0, seed=3)
    assert ds.tokens_length == 70 and len(ds) == 20_000 // 70
    indices = np.array([5, 0, len(ds) - 1])
    batch = ds.batch(indices, epoch=2)
    S = ds.target_len
    for key, shape, dtype in (("inputs", (3, 64), np.int32), ("input_mask", (3, 64), np.int32),
                              ("decoder_inputs", (3, S), np.int32), ("targets", (3, S), np.int32),
                              ("weights", (3, S), np.float32)):
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert batch["input_mask"].all() and batch["weights"].all()   # full windows: no padding anywhere
    assert (batch["inputs"][:, -1] == EOS).all() and (batch["targets"][:, -1] == EOS).all()
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["targets"][:, :-1])
    assert (batch["targets"][:, 0] == SENTINELS[0]).all()
    for row, index in enumerate(indices):
        assert _reassemble(batch["inputs"][row], batch["targets"][row]) == ds.window(index).tolist()
        sentinels = [t for t in batch["inputs"][row] if t in SENTINELS]
        np.testing.assert_array_equal(sentinels, SENTINELS[:len(sentinels)])   # in order, from <extra_id_0>
    # the same (seed, epoch, index), the same corruption, whatever the batch; another epoch, another one
    again = ds.batch(np.array([0, 5]), epoch=2)
    np.testing.assert_array_equal(again["inputs"], batch["inputs"][[1, 0]])
    other = ds.batch(indices, epoch=3)
    assert not np.array_equal(other["inputs"], batch["inputs"])
    assert _reassemble(other["inputs"][0], other["targets"][0]) == ds.window(5).tolist()
    reseeded = span_corruption.SpanCorruptionDataset(stream, 64, 0.15, 3.0, SENTINELS, EOS, pad=0, seed=4)
    assert not np.array_equal(reseeded.batch(indices, epoch=2)["inputs"], batch["inputs"])
    stats = ds.stats()
    assert stats["padding_fraction"] == 0.0 and 1.0 < stats["documents_per_sequence"] < 3.0


def test_span_corruption_on_real_text(t5_tok):
    pad, eos, _ = unigram.special_ids(t5_tok)
    sentinels = unigram.sentinel_ids(t5_tok, 100)
    stream = np.concatenate([e.ids for e in t5_tok.encode_batch(_lines(MULTI30K / "val.en"))]).astype(np.int32)
    ds = span_corruption.SpanCorruptionDataset(stream, 128, 0.15, 3.0, sentinels, eos, pad, seed=0)
    batch = ds.batch(np.arange(4))
    inputs = t5_tok.decode(batch["inputs"][0].tolist(), skip_special_tokens=False)
    targets = t5_tok.decode(batch["targets"][0].tolist(), skip_special_tokens=False)
    assert "<extra_id_0>" in inputs and targets.startswith("<extra_id_0>") and targets.endswith("</s>")
    for row in range(4):
        assert _reassemble(batch["inputs"][row], batch["targets"][row], sentinels) == ds.window(row).tolist()


def test_span_corruption_refuses_impossible_settings():
    stream = np.arange(1000, 1500, dtype=np.int32)
    with pytest.raises(UserError, match="has 500 tokens, fewer than the 568"):
        span_corruption.SpanCorruptionDataset(stream, 512, 0.15, 3.0, SENTINELS, EOS)
    with pytest.raises(UserError, match="makes 28 noise spans but the tokenizer has 10 sentinels"):
        span_corruption.SpanCorruptionDataset(np.arange(10_000), 512, 0.15, 3.0, SENTINELS[:10], EOS)
    with pytest.raises(UserError, match="data.noise_density"):
        span_corruption.SpanCorruptionDataset(stream, 64, 0.0, 3.0, SENTINELS, EOS)
    with pytest.raises(UserError, match="data.mean_noise_span_length"):
        span_corruption.SpanCorruptionDataset(stream, 64, 0.15, 0.5, SENTINELS, EOS)


# ---------------------------------------------------------------- reading pairs


def test_read_parallel_multi30k(t5_tok):   # t5_tok: skips without the shared data
    pairs = seq2seq_data.read_pairs(MULTI30K / "train", "en", "de")
    assert len(pairs) == len(pairs.targets) == 29_000
    assert pairs.sources[0] == _lines(MULTI30K / "train.en", 1)[0]
    assert pairs.targets[-1] == _lines(MULTI30K / "train.de")[-1]
    assert pairs.lines[:3] == [1, 2, 3] and pairs.target_file.endswith("train.de")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_tables_by_column_name(tmp_path):
    rows = [{"id": 1, "en": "A dog runs.", "de": "Ein Hund rennt."}, {"id": 2, "en": "Two cats.", "de": "Zwei Katzen."}]
    jsonl = _write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    tsv = _write(tmp_path / "pairs.tsv", "id\tde\ten\n" + "".join(f"{r['id']}\t{r['de']}\t{r['en']}\n" for r in rows))
    for path in (jsonl, tsv):
        pairs = seq2seq_data.read_pairs(path, "en", "de")
        assert pairs.sources == ["A dog runs.", "Two cats."] and pairs.targets == ["Ein Hund rennt.", "Zwei Katzen."]
        assert pairs.lines == ([1, 2] if path == jsonl else [2, 3])   # a TSV's first line is its header
    sources_only = _write(tmp_path / "input.tsv", "en\nA dog runs.\n")
    with pytest.raises(UserError, match=r"has no column 'de'.*its columns are \['en'\]"):
        seq2seq_data.read_pairs(sources_only, "en", "de")
    assert seq2seq_data.read_pairs(sources_only, "en", "de", require_targets=False).targets is None
    assert seq2seq_data.read_pairs(tsv, "en", "de", require_targets=False).targets[1] == "Zwei Katzen."
    with pytest.raises(UserError, match=r"pairs.tsv:3: 'en' is empty"):
        seq2seq_data.read_pairs(_write(tsv, "en\tde\na\tb\n\tc\n"), "en", "de")


def test_read_parallel_errors(tmp_path):
    prefix = tmp_path / "split"
    with pytest.raises(UserError, match=r"no such data file, nor the parallel text files .*split\.en and .*split\.de"):
        seq2seq_data.read_pairs(prefix, "en", "de")
    _write(tmp_path / "split.en", "one\ntwo\nthree\n")
    with pytest.raises(UserError, match=r"found only .*split\.en"):
        seq2seq_data.read_pairs(prefix, "en", "de")
    _write(tmp_path / "split.de", "\nzwei\n")   # the counts are reported before an empty line
    with pytest.raises(UserError, match=r"split\.en has 3 lines but .*split\.de has 2"):
        seq2seq_data.read_pairs(prefix, "en", "de")
    _write(tmp_path / "split.de", "eins\n   \ndrei\n\n\n")   # blank lines at the end are not sentences
    with pytest.raises(UserError, match=r"split\.de:2: the line is empty"):
        seq2seq_data.read_pairs(prefix, "en", "de")
    _write(tmp_path / "split.en", "\ntwo\nthree\n")
    with pytest.raises(UserError, match=r"split\.en:1: the line is empty"):
        seq2seq_data.read_pairs(prefix, "en", "de")
    pairs = seq2seq_data.read_pairs(prefix, "en", "de", skip_bad_records=True)
    assert (pairs.sources, pairs.targets, pairs.lines) == (["three"], ["drei"], [3])
    with pytest.raises(UserError, match="is not a table"):
        seq2seq_data.read_pairs(tmp_path / "split.en", "en", "de")
    (tmp_path / "split.en").write_bytes(b"one\ntw\xffo\nthree\n")
    _write(tmp_path / "split.de", "eins\nzwei\ndrei\n")
    with pytest.raises(UserError, match=r"split\.en:2: is not UTF-8 text \(byte 0xff\)"):
        seq2seq_data.read_pairs(prefix, "en", "de")
    assert seq2seq_data.read_pairs(prefix, "en", "de", skip_bad_records=True).targets == ["eins", "drei"]


def test_read_tfds_pairs(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    shakespeare = SHARED_DATA / "tinyshakespeare"
    if not shakespeare.is_dir():
        pytest.skip(f"shared data not found at {shakespeare}")
    from tfds_builders.shakespeare_speeches import shakespeare_speeches_dataset_builder as module
    module.Builder(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(shakespeare)))
    source = "tfds:shakespeare_speeches:validation"
    pairs = seq2seq_data.read_pairs(source, "speaker", "text", tfds_data_dir=str(tmp_path), tfds_download=False)
    assert len(pairs) > 100 and pairs.lines[:2] == [1, 2] and pairs.source_file == source
    speeches = (shakespeare / "input.txt").read_text().strip().split("\n\n")
    assert f"{pairs.sources[0]}:\n{pairs.targets[0]}" in speeches   # speaker -> speech, as in the text
    with pytest.raises(UserError, match=r"has no column 'de'.*its columns are \['text', 'speaker'\]"):
        seq2seq_data.read_pairs(source, "speaker", "de", tfds_data_dir=str(tmp_path), tfds_download=False)


def test_read_sources_for_prediction(tmp_path):
    plain = _write(tmp_path / "input.txt", "A dog runs.\nTwo cats.\n")
    pairs = seq2seq_data.read_pairs(plain, "en", "de", require_targets=False)
    assert (pairs.sources, pairs.targets) == (["A dog runs.", "Two cats."], None)
    _write(tmp_path / "only.en", "A dog runs.\n")
    pairs = seq2seq_data.read_pairs(tmp_path / "only", "en", "de", require_targets=False)
    assert (pairs.sources, pairs.targets) == (["A dog runs."], None)


# ---------------------------------------------------------------- seq2seq batches


def test_seq2seq_batches(t5_tok, val_pairs):
    ds = seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 128, 96, prefix=PREFIX, warn=pytest.fail)
    assert len(ds) == 1014 and ds.references is val_pairs.targets and ds.sources == val_pairs.sources
    indices = np.array([7, 0, 1013])
    batch = ds.batch(indices)
    assert set(batch) == set(seq2seq_data.BATCH_KEYS)
    for key, width, dtype in (("inputs", 128, np.int32), ("input_mask", 128, np.int32),
                              ("decoder_inputs", 96, np.int32), ("targets", 96, np.int32), ("weights", 96, np.float32)):
        assert batch[key].shape == (3, width) and batch[key].dtype == dtype, key
    for row, i in enumerate(indices):
        source = t5_tok.encode(PREFIX + val_pairs.sources[i]).ids
        target = t5_tok.encode(val_pairs.targets[i]).ids
        assert source[-1] == target[-1] == 1
        np.testing.assert_array_equal(batch["inputs"][row], source + [0] * (128 - len(source)))
        np.testing.assert_array_equal(batch["input_mask"][row], [1] * len(source) + [0] * (128 - len(source)))
        np.testing.assert_array_equal(batch["targets"][row], target + [0] * (96 - len(target)))
        np.testing.assert_array_equal(batch["weights"][row], [1.0] * len(target) + [0.0] * (96 - len(target)))
        assert ds.source_ids(np.array([i])) == [source]
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["targets"][:, :-1])
    assert t5_tok.decode(ds.source_ids([0])[0]).startswith(PREFIX + val_pairs.sources[0][:10])


def test_seq2seq_truncates_with_one_warning_or_refuses(t5_tok, val_pairs):
    warnings = []
    ds = seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 24, 28, warn=warnings.append)
    lengths = [len(e.ids) for e in t5_tok.encode_batch(val_pairs.sources)]
    over = sum(n > 24 for n in lengths)
    target_over = sum(len(e.ids) > 28 for e in t5_tok.encode_batch(val_pairs.targets))
    assert 0 < over < len(val_pairs) / 2 and 0 < target_over < len(val_pairs) / 2
    assert warnings == [f"{val_pairs.path}: {over} of 1014 sources truncated to 24 tokens (data.seq_len), "
                        f"{target_over} of 1014 targets truncated to 28 tokens (data.target_len); "
                        f"raise the lengths or set data.too_long=refuse to find them"]
    longest = int(np.argmax(lengths))
    row = ds.batch(np.array([longest]))
    assert row["input_mask"].all() and row["inputs"][0, -1] == 1
    np.testing.assert_array_equal(row["inputs"][0, :-1], t5_tok.encode(val_pairs.sources[longest]).ids[:23])
    first = next(i for i, n in enumerate(lengths) if n > 24)
    with pytest.raises(UserError, match=rf"val\.en:{first + 1}: the source has {lengths[first]} tokens, more than 24"):
        seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 24, 128, too_long="refuse")
    with pytest.raises(UserError, match=r"val\.de:\d+: the target has \d+ tokens, more than 28 \(data.target_len\)"):
        seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 128, 28, too_long="refuse")
    seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 128, 128, warn=pytest.fail)   # nothing cut: no warning


def test_seq2seq_dynamic_padding(t5_tok, val_pairs):
    ds = seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 96, 128, warn=pytest.fail)
    padding = ds.padding
    assert padding.buckets == length_buckets.bucket_lengths(128) == (16, 32, 64, 128)
    assert set(padding.per_token) == set(seq2seq_data.BATCH_KEYS)
    np.testing.assert_array_equal(padding.lengths, np.maximum(ds.source_lengths, ds.target_lengths))
    indices = np.flatnonzero((padding.lengths > 16) & (padding.lengths <= 32))[:16]   # short captions
    batch = length_buckets.load_batch(ds, indices)
    assert batch["inputs"].shape == (16, 32) and batch["targets"].shape == (16, 32)
    full = ds.batch(indices)
    assert batch["input_mask"].sum() == full["input_mask"].sum() and batch["weights"].sum() == full["weights"].sum()
    assert seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 64, 64, dynamic_padding=False).padding is None


def test_seq2seq_adds_eos_and_refuses_non_t5_tokenizers(t5_tok, val_pairs):
    bare = t5_tok.from_str(t5_tok.to_str())
    bare.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    assert bare.encode("A dog.").ids[-1] != 1
    batch = seq2seq_data.Seq2SeqDataset(val_pairs, bare, 64, 64).batch(np.arange(4))
    ends = batch["input_mask"].sum(axis=1) - 1
    assert (batch["inputs"][np.arange(4), ends] == 1).all()
    with pytest.raises(UserError, match="lacks <pad> </s> <unk>"):
        seq2seq_data.Seq2SeqDataset(val_pairs, bpe.train_bpe(val_pairs.sources[:50], 300), 64, 64)
    with pytest.raises(UserError, match="data.too_long"):
        seq2seq_data.Seq2SeqDataset(val_pairs, t5_tok, 64, 64, too_long="drop")
    targetless = seq2seq_data.Pairs("input.txt", val_pairs.sources[:3], None)
    batch = seq2seq_data.Seq2SeqDataset(targetless, t5_tok, 64, 64).batch(np.arange(3))
    assert batch["input_mask"].any() and not batch["weights"].any() and not batch["targets"].any()
