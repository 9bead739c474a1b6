"""From config to tokenizer, label names and the splits of a run's task, reusing what the
workdir already has (its tokenizer and label map), so a resumed run reads data the same way."""

import dataclasses
import os
import re
from pathlib import Path

import jax

from flax_lm import json_files
from flax_lm.data import (
    conll,
    corpus,
    exchange,
    lm_data,
    mlm_data,
    seq2seq_data,
    span_corruption,
    squad,
    text_classification,
    token_store,
    unigram,
    wordpiece,
)
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError
from flax_lm.models import DECODERS

SPLITS = ("train", "validation", "test")
PRETRAINING = ("causal_lm", "masked_lm", "span_corruption")  # tasks that read data.source
STORED = ("causal_lm", "span_corruption")  # those whose data.source may be a token store (one token stream)


@dataclasses.dataclass
class Prepared:
    tokenizer: object
    splits: dict            # split name -> Dataset (flax_lm.data.dataset); only the splits configured
    label_names: list[str] | None  # classification labels or NER tags, in id order


def prepare(cfg, workdir: Path, is_primary: bool = True, splits: tuple[str, ...] = SPLITS,
            source_tokenizer=None) -> Prepared:
    """The tokenizer, label names and datasets of the run's task; the tokenizer and label
    names are saved in the workdir the first time. `source_tokenizer(source)` reads the tokenizer
    of `train.init_from` (a workdir or an HF directory, which the layers above know)."""
    workdir = Path(workdir)
    if cfg.task in PRETRAINING:
        if token_store.is_store(cfg.data.source):
            store = _store(cfg)
            saved = workdir / tokenizer_lib.FILE
            if saved.is_file() and tokenizer_lib.load(saved).to_str() != store.tokenizer.to_str():
                raise UserError(f"{saved} is not the tokenizer of data.source {cfg.data.source!r}; "
                                f"a run keeps the tokenizer it started with (use a new workdir)")
            tokenizer = _checked_and_saved(cfg, workdir, store.tokenizer, is_primary)
            return Prepared(tokenizer, _pretraining_splits(cfg, store, tokenizer), None)
        documents = _documents(cfg.data)
        tokenizer = tokenizer_for(cfg, workdir, documents, is_primary, source_tokenizer)
        return Prepared(tokenizer, _pretraining_splits(cfg, documents, tokenizer), None)
    if cfg.task not in _FINE_TUNING:
        raise UserError(f"task {cfg.task!r} has no training data: it is an imported base model for flax-lm embed; "
                        f"fine-tune it with train.init_from=ITS_WORKDIR and a task")
    reader = _FINE_TUNING[cfg.task]
    for split in ("train", "validation"):
        if not cfg.data[split]:
            raise UserError(f"task {cfg.task!r} needs data.{split}, the file of its {split} split")
    train_rows = reader.read(cfg, cfg.data.train)
    tokenizer = tokenizer_for(cfg, workdir, reader.texts(train_rows), is_primary, source_tokenizer)
    labels = reader.labels(cfg, workdir, train_rows, is_primary)
    datasets = {}
    for split in splits:
        path = cfg.data[split]
        if path:
            rows = train_rows if split == "train" else reader.read(cfg, path)
            datasets[split] = reader.dataset(cfg, rows, tokenizer, labels)
    return Prepared(tokenizer, datasets, _names(labels))


def load_saved(cfg, workdir: Path) -> Prepared:
    """The tokenizer and label names a run saved in its workdir, with no data read."""
    workdir = Path(workdir)
    tokenizer = tokenizer_lib.load(workdir / tokenizer_lib.FILE)
    labels = None
    if cfg.task in _FINE_TUNING:
        labels = _FINE_TUNING[cfg.task].saved_labels(workdir)
    return Prepared(tokenizer, {}, _names(labels))


def predict_dataset(cfg, prepared: Prepared, path: str):
    """The dataset of a file to label with `flax-lm predict` (labels, if present, are ignored)."""
    if cfg.task not in _FINE_TUNING:
        generate = " (continue text with flax-lm generate)" if cfg.task == "causal_lm" else ""
        raise UserError(f"flax-lm predict labels text for fine-tuned tasks; this run's task is {cfg.task!r}{generate}")
    reader = _FINE_TUNING[cfg.task]
    labels = reader.saved_labels_from_names(prepared.label_names)
    known = {"known_labels": prepared.label_names} if cfg.task == "classification" else {}  # find a file's labels
    return reader.dataset(cfg, reader.read(cfg, path, require_labels=False, **known), prepared.tokenizer, labels)


def save_label_names(cfg, workdir: Path, names: list[str]) -> None:
    """Writes a run's label names (e.g. those of an imported classifier) where `load_saved` reads them."""
    _FINE_TUNING[cfg.task].save(Path(workdir), names)


def seq_len(cfg) -> int:
    """Tokens per example: data.seq_len, else the model's positions."""
    return cfg.data.seq_len or cfg.model.max_len


def target_len(cfg) -> int:
    """Target tokens of a seq2seq example: data.target_len, else data.seq_len's."""
    return cfg.data.target_len or seq_len(cfg)


def end_token(cfg, tokenizer) -> int:
    """The id that ends each document in the token stream of a `STORED` task: T5's </s> for span
    corruption, the end-of-text token for a causal LM."""
    return unigram.special_ids(tokenizer)[1] if cfg.task == "span_corruption" else tokenizer_lib.eos_id(tokenizer)


def pad_id(tokenizer) -> int:
    return wordpiece.special_tokens(tokenizer).pad


def _names(labels):
    if labels is None:
        return None
    return labels.names if isinstance(labels, text_classification.LabelMap) else list(labels)


def tokenizer_for(cfg, workdir: Path, texts: list[str], is_primary: bool, source_tokenizer=None):
    """The workdir's tokenizer (resume), else the configured file, else that of `train.init_from`
    (read by `source_tokenizer`), else one trained on `texts` (byte-level BPE for decoders,
    WordPiece for encoders)."""
    saved = workdir / tokenizer_lib.FILE
    if saved.is_file():
        tokenizer = tokenizer_lib.load(saved)
    elif cfg.data.tokenizer.endswith(".txt"):
        tokenizer = wordpiece.load_vocab(cfg.data.tokenizer, cfg.data.lowercase)
    elif cfg.data.tokenizer:
        tokenizer = tokenizer_lib.load(cfg.data.tokenizer)
    elif cfg.train.init_from:
        tokenizer = source_tokenizer(cfg.train.init_from)
    elif cfg.model.family in DECODERS:
        tokenizer = tokenizer_lib.train_bpe(texts, cfg.model.vocab_size)
    elif cfg.model.family == "t5":
        tokenizer = unigram.train_unigram(texts, cfg.model.vocab_size, cfg.data.extra_ids)
    elif cfg.model.family == "elmo":   # WordPiece (for its NER and classification data) + the LM's document end
        tokenizer = wordpiece.train_wordpiece(texts, cfg.model.vocab_size - 1, cfg.data.lowercase)
        tokenizer.add_special_tokens([tokenizer_lib.EOS])
    else:
        tokenizer = wordpiece.train_wordpiece(texts, cfg.model.vocab_size, cfg.data.lowercase)
    return _checked_and_saved(cfg, workdir, tokenizer, is_primary)


def _checked_and_saved(cfg, workdir: Path, tokenizer, is_primary: bool):
    """`tokenizer` if the model can use it (vocabulary size, special ids), saved in the workdir the
    first time."""
    saved = workdir / tokenizer_lib.FILE
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size is "
            f"{cfg.model.vocab_size}; raise model.vocab_size")
    if cfg.model.family == "t5":
        unigram.special_ids(tokenizer)   # a tokenizer without T5's <pad>, </s>, <unk> is refused here
    if cfg.model.family == "bert":
        pad = pad_id(tokenizer)
        if cfg.model.variant == "roberta" and pad != cfg.model.pad_token_id:
            raise UserError(f"the tokenizer's padding id is {pad} but model.pad_token_id is {cfg.model.pad_token_id}")
    if is_primary and not saved.is_file():
        # written whole, then renamed: another process may be reading the workdir already
        partial = saved.with_suffix(".partial")
        tokenizer.save(str(partial))
        os.replace(partial, saved)
    return tokenizer


def _documents(data) -> list[str]:
    """The pre-training documents. With several processes each reads its shard and the
    shards are exchanged (`exchange`), so every process has what one process would read."""
    options = dict(document_field=data.document_field, tfds_data_dir=data.tfds_data_dir,
                   tfds_download=data.tfds_download, skip_bad_records=data.skip_bad_records,
                   hf_config=data.hf_config)
    if jax.process_count() == 1:
        return corpus.read_documents(data.source, data.max_bytes, **options)
    shard = corpus.read_shard(data.source, data.max_bytes, shard=(jax.process_index(), jax.process_count()),
                              **options)
    documents = corpus.cap(exchange.all_documents(shard), data.max_bytes)
    if not documents:
        raise UserError(f"data.source: the corpus {data.source!r} is empty (no text in it)")
    return documents


def _store(cfg) -> token_store.Store:
    """The token store of data.source, refused with one line for what it cannot serve."""
    d = cfg.data
    if cfg.task not in STORED:
        raise UserError(f"data.source {d.source!r}: a token store serves {' and '.join(STORED)}; "
                        f"{cfg.task} reads its documents from text")
    if d.max_bytes:
        raise UserError("data.max_bytes limits the text a run reads; a token store holds what flax-lm prepare "
                        "read (set data.max_bytes there)")
    store = token_store.Store(d.source)
    if d.tokenizer and tokenizer_lib.load(d.tokenizer).to_str() != store.tokenizer.to_str():
        raise UserError(f"data.tokenizer {d.tokenizer!r} is not the tokenizer of the store {d.source!r}; "
                        f"leave data.tokenizer empty (the store brings its own)")
    return store


def _stream_splits(cfg, documents, tokenizer, window_len: int, eos: int) -> lm_data.Splits:
    """The token stream of the documents (tokenized here) or of a token store (read lazily),
    its tail held out for validation."""
    if not isinstance(documents, token_store.Store):
        return lm_data.tokenize_and_split(documents, tokenizer, cfg.data.validation_fraction, window_len, eos=eos)
    if documents.eos != eos:
        raise UserError(f"data.source {cfg.data.source!r}: the store ends documents with token {documents.eos}, "
                        f"task {cfg.task} with {eos}; prepare the store with this run's config")
    return lm_data.split_stream(documents.stream, cfg.data.validation_fraction, window_len)


def _pretraining_splits(cfg, documents: list[str] | token_store.Store, tokenizer) -> dict:
    if cfg.task == "causal_lm":
        eos, packing = end_token(cfg, tokenizer), cfg.data.packing
        streams = _stream_splits(cfg, documents, tokenizer, seq_len(cfg), eos)
        return {"train": lm_data.LMWindows(streams.train, seq_len(cfg), eos, packing),
                "validation": lm_data.LMWindows(streams.validation, seq_len(cfg), eos, packing)}
    if cfg.task == "span_corruption":
        return _span_corruption_splits(cfg, documents, tokenizer)
    # BERT's input format: a blank line ends a document. The last documents are held out.
    pieces = [p for doc in documents for p in re.split(r"\n\s*\n", doc) if p.strip()]
    n_val = max(1, int(len(pieces) * cfg.data.validation_fraction))
    if len(pieces) - n_val < 2:
        raise UserError(f"data.source: {len(pieces)} documents (blank-line separated) are too few to hold out "
                        f"a validation fraction of {cfg.data.validation_fraction}; give more text")
    d = cfg.data

    def dataset(docs, seed):
        return mlm_data.MLMDataset(docs, tokenizer, seq_len(cfg), seed, nsp=d.nsp,
                                   whole_word=d.whole_word_masking, mask_prob=d.mask_prob,
                                   max_predictions=d.max_predictions or None)
    return {"train": dataset(pieces[:-n_val], cfg.train.seed), "validation": dataset(pieces[-n_val:], cfg.train.seed)}


def _span_corruption_splits(cfg, documents: list[str] | token_store.Store, tokenizer) -> dict:
    """T5 pre-training: the documents joined with the end token into one stream, its tail held
    out, each split cut into windows that span corruption turns into data.seq_len inputs."""
    d = cfg.data
    pad, eos, _ = unigram.special_ids(tokenizer)
    sentinels = unigram.sentinel_ids(tokenizer, d.extra_ids)
    raw_len, _ = span_corruption.lengths_for(seq_len(cfg), d.noise_density, d.mean_noise_span_length)
    streams = _stream_splits(cfg, documents, tokenizer, raw_len, eos)

    def dataset(tokens):
        return span_corruption.SpanCorruptionDataset(tokens, seq_len(cfg), d.noise_density, d.mean_noise_span_length,
                                                     sentinels, eos, pad, cfg.train.seed)
    return {"train": dataset(streams.train), "validation": dataset(streams.validation)}


class _Classification:
    LABELS = "labels.json"

    @staticmethod
    def read(cfg, path, require_labels=True, known_labels=None):
        d = cfg.data
        return text_classification.read_examples(path, d.text_column, d.text_pair_column, d.label_column,
                                                 require_labels=require_labels, skip_bad_records=d.skip_bad_records,
                                                 tfds_data_dir=d.tfds_data_dir, tfds_download=d.tfds_download,
                                                 known_labels=known_labels, hf_config=d.hf_config)

    @staticmethod
    def texts(rows):
        return rows.texts + (rows.pairs or [])

    def labels(self, cfg, workdir, rows, is_primary):
        if (workdir / self.LABELS).is_file():
            return text_classification.LabelMap.load(workdir / self.LABELS)
        labels = text_classification.LabelMap.from_labels(rows.labels, cfg.model.num_labels == 1, rows.path)
        if is_primary:
            labels.save(workdir / self.LABELS)
        return labels

    def saved_labels(self, workdir):
        return text_classification.LabelMap.load(workdir / self.LABELS)

    def save(self, workdir, names):
        self.saved_labels_from_names(names).save(workdir / self.LABELS)

    @staticmethod
    def saved_labels_from_names(names):
        return text_classification.LabelMap(names=names, regression=names == ["score"])

    @staticmethod
    def dataset(cfg, rows, tokenizer, labels):
        return text_classification.ClassificationDataset(rows, tokenizer, seq_len(cfg), pad_id(tokenizer), labels,
                                                         cfg.data.dynamic_padding)


class _TokenClassification:
    LABELS = "tags.json"

    @staticmethod
    def read(cfg, path, require_labels=True):
        return conll.read_conll(path, cfg.data.tag_column if require_labels else None, cfg.data.skip_bad_records)

    @staticmethod
    def texts(rows):
        return [" ".join(s.words) for s in rows]

    def labels(self, cfg, workdir, rows, is_primary):
        if (workdir / self.LABELS).is_file():
            return self.saved_labels(workdir)
        names = conll.tag_names(rows)
        if is_primary:
            self.save(workdir, names)
        return names

    def saved_labels(self, workdir):
        return json_files.read_json(workdir / self.LABELS)

    def save(self, workdir, names):
        json_files.write_json(workdir / self.LABELS, names)

    @staticmethod
    def saved_labels_from_names(names):
        return names

    @staticmethod
    def dataset(cfg, rows, tokenizer, labels):
        return conll.TokenClassificationDataset(rows, tokenizer, seq_len(cfg), pad_id(tokenizer), labels,
                                                cfg.data.dynamic_padding)


class _Unlabelled:
    """Tasks whose answers are text, not classes: nothing to map or save."""

    def labels(self, cfg, workdir, rows, is_primary):
        return None

    def saved_labels(self, workdir):
        return None

    @staticmethod
    def saved_labels_from_names(names):
        return None


class _QuestionAnswering(_Unlabelled):
    @staticmethod
    def read(cfg, path, require_labels=True):
        return squad.read_squad(path)

    @staticmethod
    def texts(rows):
        return [e.question for e in rows] + sorted({e.context for e in rows})

    @staticmethod
    def dataset(cfg, rows, tokenizer, labels):
        return squad.QADataset(rows, tokenizer, seq_len(cfg), pad_id(tokenizer), cfg.data.doc_stride,
                               cfg.data.max_query_len)


class _Seq2Seq(_Unlabelled):
    """Text pairs (translation, summarization); a tokenizer trained here learns the sources and targets."""

    @staticmethod
    def read(cfg, path, require_labels=True):
        d = cfg.data
        return seq2seq_data.read_pairs(path, d.source_field, d.target_field, require_targets=require_labels,
                                       skip_bad_records=d.skip_bad_records, tfds_data_dir=d.tfds_data_dir,
                                       tfds_download=d.tfds_download, hf_config=d.hf_config)

    @staticmethod
    def texts(rows):
        return rows.sources + (rows.targets or [])

    @staticmethod
    def dataset(cfg, rows, tokenizer, labels):
        d = cfg.data
        return seq2seq_data.Seq2SeqDataset(rows, tokenizer, seq_len(cfg), target_len(cfg), prefix=d.source_prefix,
                                           too_long=d.too_long, dynamic_padding=d.dynamic_padding)


_FINE_TUNING = {"classification": _Classification(), "token_classification": _TokenClassification(),
                "question_answering": _QuestionAnswering(), "seq2seq": _Seq2Seq()}
FINE_TUNING_TASKS = tuple(_FINE_TUNING)  # those `predict_dataset` reads input for
