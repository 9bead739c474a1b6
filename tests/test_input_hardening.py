"""Malformed input, generated with hypothesis: the config parser and every data reader either
succeed with sane results or raise a UserError of one line that names the key or the file (and
its line); no other exception escapes, and no record is dropped unless data.skip_bad_records
asks for it, and then it is counted and reported."""

import csv
import io
import json
import math
import re
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers.implementations import BertWordPieceTokenizer

from flax_lm.config import load as config, defaults
from flax_lm.data import conll, corpus, pipeline, squad, text_classification, wordpiece
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError

# Derandomized and without an example database: CI sees the same examples on every run, so a failure
# reproduces. The counts keep the file near 35 s on two cores (a quarter of it the `flax-lm train` test).
CHEAP = settings(max_examples=300, deadline=None, derandomize=True, database=None)
COSTLY = settings(max_examples=150, deadline=None, derandomize=True, database=None)

WORDS = "the a of and is was not very good bad movie film great plot fun dull who won team paris john".split()
# Byte strings that break parsers: encodings, separators, quotes, JSON syntax, numbers that are not finite.
TRICKY = [b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r", b"\n", b"\r\n", b"\n\n", b"\t", b",",
          b'"', b"'", b"{", b"}", b"[", b"]", b":", b" ", b"\xc2\xa0", b"\xc2\x85", b"\xe2\x80\xa8", b"\x0c",
          b"NaN", b"-1", b"1e999", b"null", b"true", b"-DOCSTART-", b"\\", b"O", b"B-PER", b"[PAD]", b"##"]


def outcome(fn, *names):
    """fn()'s result, or None after a UserError, whose message must be one non-empty line a problem
    (a config with several problems names each on its line), together containing `names`."""
    try:
        return fn()
    except UserError as e:
        message = str(e)
        assert "\r" not in message and all(line.strip() for line in message.split("\n")), repr(message)
        for name in names:
            assert str(name) in message, (name, message)
        return None


def rejected(fn, *names) -> str:
    """The one-line message of the UserError that fn() must raise."""
    with pytest.raises(UserError) as info:
        fn()
    assert outcome(fn, *names) is None
    return str(info.value)


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """`valid` after a few cuts, insertions of TRICKY or random bytes, CRLF line ends, a BOM, a 140 kB line."""
    data = valid
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(("truncate", "insert", "insert", "delete", "crlf", "bom", "huge", "duplicate")))
        if kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            piece = draw(st.sampled_from(TRICKY) | st.text(min_size=1, max_size=4).map(str.encode) |
                         st.binary(min_size=1, max_size=4))
            data = data[:at] + piece + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 12)):]
        elif kind == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif kind == "bom":
            data = b"\xef\xbb\xbf" + data
        elif kind == "huge":   # longer than the csv module's field limit (128 KiB)
            data = data[:at] + b"x" * 140_000 + data[at:]
        else:
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            data = b"\n".join(lines[:i + 1] + lines[i:])
    return data


def malformed(valid: bytes):
    """Mostly files near `valid` (whose readers get past the first line), else random bytes or runs of TRICKY."""
    return st.one_of(mutated(valid), mutated(valid), mutated(valid), st.binary(max_size=64),
                     st.lists(st.sampled_from(TRICKY), max_size=12).map(b"".join))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def universal_lines(data: bytes) -> list[str]:
    """Lines as Python's universal newlines see them, after UTF-8 decoding with an optional BOM (bytes
    that are not UTF-8 may stay on lines a reader ignores, such as CoNLL's -DOCSTART-)."""
    return re.split(r"\r\n|\r|\n", data.decode("utf-8-sig", errors="surrogateescape"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One folder for the module; every hypothesis example overwrites its file in it."""
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def vocab_file(scratch):
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = dict.fromkeys(list(wordpiece.BERT_SPECIALS) + WORDS + chars + ["##" + c for c in chars])
    path = scratch / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="module")
def bert_tok(vocab_file):
    return BertWordPieceTokenizer(str(vocab_file), lowercase=True)._tokenizer


@pytest.fixture(scope="module")
def bpe_file(scratch):
    docs = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    path = scratch / "bpe.json"
    tokenizer_lib.train_bpe(docs, vocab_size=300).save(str(path))
    return path


# ---------------------------------------------------------------- config


def _flat(cfg) -> dict:
    """Dotted key -> value of every leaf of a config."""
    def walk(tree, prefix):
        for key, value in tree.items():
            yield from walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
    return dict(walk(cfg.to_dict(), ""))


SCHEMA = _flat(defaults.get_config())
ALL_KEYS = list(SCHEMA)
VALUES = st.sampled_from([
    "1e999", "-1e999", "1" + "0" * 400, "9" * 5000, "nan", "inf", "1_000", "0x10", "²", "١٢", "True", "None",
    "[1, 2]", "{1: 2}", "1j", "...", "b'x'", "'x'", '"', "", " ", "\n", "1\n", "\x00", "0.5", "-3", "3",
    "(" * 300 + "1" + ")" * 300, "-" * 100_000 + "1", "[" * 100_000, "13,198", "1,²"]) | st.text(max_size=12)
OVERRIDES = st.one_of(
    st.builds("--config.{}={}".format, st.sampled_from(ALL_KEYS), VALUES),
    st.builds("--config.{}={}".format, st.text(max_size=12), VALUES),
    st.text(max_size=30))


def _check_schema(cfg) -> None:
    """The schema's keys, each value of its schema type, and no float infinite or NaN."""
    values = _flat(cfg)
    assert values.keys() == SCHEMA.keys()
    for key, want in SCHEMA.items():
        assert type(values[key]) is type(want), (key, values[key])
        assert not isinstance(want, float) or math.isfinite(values[key]), (key, values[key])


@CHEAP
@given(st.lists(OVERRIDES, max_size=3))
@example(["--config.optim.learning_rate=1" + "0" * 400])      # float(int) overflowed
@example(["--config.optim.learning_rate=1e999"])              # infinity passed validation
@example(["--config.train.steps=" + "-" * 100_000 + "1"])     # the parser ran out of memory
@example(["--config.sample.stop_token_ids=²"])                 # isdigit() but not int()
def test_overrides_parse_or_name_the_problem(overrides):
    cfg = outcome(lambda: config.load("gpt2_tiny", overrides))
    if cfg is not None:
        _check_schema(cfg)


def test_overrides_that_are_not_finite_numbers_name_the_key():
    def load(override):
        return lambda: config.load("gpt2_tiny", [override])
    for value in ("1e999", "-1e999", "1" + "0" * 400):
        assert "optim.learning_rate" in rejected(load(f"--config.optim.learning_rate={value}"))
    assert "train.steps" in rejected(load("--config.train.steps=" + "-" * 100_000 + "1"))
    assert "stop_token_ids" in rejected(load("--config.sample.stop_token_ids=1,²"))
    assert len(rejected(load("--config.train.steps=" + "9" * 5000))) < 200   # the value is cut, not echoed whole


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def saved_configs(draw) -> str:
    """The JSON of a saved config with one key replaced, added or dropped, or cut, or something else."""
    tree = defaults.get_config().to_dict()
    key = draw(st.sampled_from(ALL_KEYS + ["model", "nope", "model.nope"]))
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    if draw(st.booleans()):
        node[leaf] = draw(JSON_VALUES)
    else:
        node.pop(leaf, None)
    text = json.dumps(tree)
    return draw(st.sampled_from([text, text[:draw(st.integers(0, len(text)))]]) | st.text(max_size=20) |
                JSON_VALUES.map(json.dumps))


@CHEAP
@given(saved_configs())
@example("[" * 100_000)                        # json recursion
@example('{"train": {"steps": 1' + "0" * 5000 + "}}")   # Python refuses to read ints of over 4300 digits
@example("not json")
@example('["a list"]')
@example('{"optim": {"b1": NaN}}')
@example('{"optim": {"learning_rate": Infinity}}')
def test_saved_config_json_parses_or_names_the_problem(text):
    cfg = outcome(lambda: config.from_json(text))
    if cfg is not None:
        _check_schema(cfg)


RECIPES = [
    "from flax_lm.config import defaults\ndef get_config():\n    return defaults.get_config()\n",
    "def get_config():\n    return 3\n",
    "def get_config():\n    return {'model': {'d_model': 64}}\n",
    "get_config = None\n",
    "def get_config(:\n",
    "def get_config():\n    raise ValueError('two\\nlines')\n",
    "import no_such_module_here\n",
    "x = 1 / 0\n",
    "",
]


@COSTLY
@given(st.sampled_from(RECIPES).map(str.encode) | st.binary(max_size=40), st.sampled_from([".py", ".txt", ""]))
@example(RECIPES[0].encode(), ".txt")        # no module loader for the suffix: spec was None
@example(b"x = 1\x00\n", ".py")               # null bytes
@example(b"\xff\n", ".py")                    # not UTF-8
def test_recipe_files_load_or_name_the_file(scratch, content, suffix):
    path = _write(scratch / f"recipe{suffix}", content)
    cfg = outcome(lambda: config.load(str(path)), path)
    if cfg is not None:
        _check_schema(cfg)


def test_broken_recipes_name_the_file_and_line(scratch):
    path = scratch / "broken.py"
    path.write_text(RECIPES[5])
    message = rejected(lambda: config.load(str(path)), path)
    assert f"{path}:2" in message and "ValueError" in message
    path.write_text(RECIPES[4])
    assert f"{path}:1" in rejected(lambda: config.load(str(path)), path)
    path.write_text(RECIPES[1])
    assert "ConfigDict" in rejected(lambda: config.load(str(path)), path)
    (scratch / "recipe.json").write_text("{}")
    assert "python" in rejected(lambda: config.load(str(scratch / "recipe.json")), "recipe.json").lower()


@CHEAP
@given(st.text(max_size=20))
@example("")
@example(".")
@example("a\x00b")
def test_recipe_names_load_or_say_none_is_there(name):
    outcome(lambda: config.load(name))


# ---------------------------------------------------------------- classification files


ROWS = [("1", "a good movie"), ("0", 'a bad, "dull" plot'), ("1", "great fun")]
VALID_CLASSIFICATION = {
    ".tsv": ("label\tsentence\n" + "".join(f"{label}\t{text}\n" for label, text in ROWS)).encode(),
    ".jsonl": "".join(json.dumps({"label": label, "sentence": text}) + "\n" for label, text in ROWS).encode(),
}
_csv = io.StringIO()
csv.writer(_csv, lineterminator="\n").writerows([("label", "sentence"), *ROWS])
VALID_CLASSIFICATION[".csv"] = _csv.getvalue().encode()


def _data_lines(data: bytes, suffix: str) -> int:
    """How many records a TSV or JSONL file has: its non-blank lines, less the TSV header."""
    lines = [line for line in universal_lines(data) if line.strip()]
    return len(lines) - (suffix == ".tsv")


def _check_classification(path, data: bytes, examples, tokenizer) -> None:
    assert len(examples) > 0 and len(examples.labels) == len(examples) and examples.pairs is None
    for text, label in zip(examples.texts, examples.labels):
        assert text.strip() and label == label.strip() and label
        text.encode("utf-8"), label.encode("utf-8")   # no lone surrogates from undecodable bytes
    if path.suffix in (".tsv", ".jsonl"):   # nothing was dropped silently (CSV fields may span lines)
        assert len(examples) == _data_lines(data, path.suffix)
    label_map = outcome(lambda: text_classification.LabelMap.from_labels(examples.labels, False, examples.path), path)
    if label_map is None:
        return
    ds = text_classification.ClassificationDataset(examples, tokenizer, 16, 0, label_map)
    batch = ds.batch(np.arange(min(len(ds), 4)))
    assert batch["input_ids"].shape == (min(len(ds), 4), 16)
    assert 0 <= batch["labels"].min() and batch["labels"].max() < label_map.num_labels


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
@CHEAP
@given(data=st.data())
def test_classification_files_read_or_name_file_and_line(scratch, bert_tok, suffix, data):
    content = data.draw(malformed(VALID_CLASSIFICATION[suffix]), label="content")
    path = _write(scratch / f"train{suffix}", content)
    examples = outcome(lambda: text_classification.read_examples(path, "sentence"), path)
    if examples is not None:
        _check_classification(path, content, examples, bert_tok)


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_classification_files_with_a_bom_and_crlf_read_as_without(scratch, suffix):
    plain = VALID_CLASSIFICATION[suffix]
    want = text_classification.read_examples(_write(scratch / f"plain{suffix}", plain), "sentence")
    crlf = plain.replace(b"\n", b"\r\n")
    for variant in (b"\xef\xbb\xbf" + plain, crlf, b"\xef\xbb\xbf" + crlf):
        got = text_classification.read_examples(_write(scratch / f"variant{suffix}", variant), "sentence")
        assert (got.texts, got.labels) == (want.texts, want.labels)


def _classification(path):
    return text_classification.read_examples(path, "sentence")


NOT_UTF8_AT_LINE_3 = {   # file name: (content, reader)
    "latin1.tsv": (b"label\tsentence\n1\tgood\n0\tcaf\xe9\n", _classification),
    "latin1.jsonl": (b'{"sentence": "a"}\n{"sentence": "b"}\n{"sentence": "\xe9"}\n', _classification),
    "latin1.conll": (b"John B-PER\n\ncaf\xe9 O\n", conll.read_conll),
    "latin1.json": (b'{"data": [\n{"paragraphs": []},\n"caf\xe9"]}', squad.read_squad),
    "latin1_vocab.txt": (b"[UNK]\n[CLS]\ncaf\xe9\n[SEP]\n", lambda p: wordpiece.load_vocab(p, True)),
    "latin1.txt": (b"some\ntext\ncaf\xe9\n", lambda p: corpus.read_documents(str(p))),
}


@pytest.mark.parametrize("name", NOT_UTF8_AT_LINE_3)
def test_bytes_that_are_not_utf8_are_reported_at_their_line(scratch, name):
    content, reader = NOT_UTF8_AT_LINE_3[name]
    path = _write(scratch / name, content)
    assert f"{path}:3: is not UTF-8 text (byte 0xe9)" in rejected(lambda: reader(path), path)


def test_bytes_that_are_not_utf8_past_the_first_8_kib(scratch):
    """The reader decoded in chunks: the offset it reported was within a chunk, not the file."""
    path = _write(scratch / "late_latin1.tsv", b"label\tsentence\n" + b"1\tgood\n" * 3000 + b"0\tcaf\xe9\n")
    assert f"{path}:3002:" in rejected(lambda: text_classification.read_examples(path, "sentence"), path)


def test_deeply_nested_or_huge_json_lines_are_a_user_error(scratch):
    path = _write(scratch / "deep.jsonl", VALID_CLASSIFICATION[".jsonl"] + b'{"sentence": ' + b"[" * 100_000 + b"\n")
    assert f"{path}:4:" in rejected(lambda: text_classification.read_examples(path, "sentence"), path)
    path = _write(scratch / "huge.jsonl", VALID_CLASSIFICATION[".jsonl"] + b'{"label": 1' + b"0" * 5000 + b"}\n")
    assert f"{path}:4:" in rejected(lambda: text_classification.read_examples(path, "sentence"), path)


def test_headers_with_a_repeated_column_or_none_are_a_user_error(scratch):
    """A repeated column name was read as its last column; an empty first line as a header of no columns."""
    path = _write(scratch / "dup.tsv", b"label\tsentence\tlabel\n1\tgood\t0\n")
    assert "column 'label' twice" in rejected(lambda: text_classification.read_examples(path, "sentence"), path)
    path = _write(scratch / "blank_header.csv", b"\nlabel,sentence\n1,good\n")
    assert f"{path}:1: the first line is empty" in rejected(
        lambda: text_classification.read_examples(path, "sentence"), path)


@CHEAP
@given(st.lists(st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999", "1_0", " 2 ", "0.5", "3", "x", "١"]) |
                st.text(max_size=5), min_size=1, max_size=5))
@example(["1", "nan"])
@example(["inf", "2"])
@example(["1e39", "2"])     # finite as a Python float, inf as float32
def test_regression_labels_are_finite_or_a_user_error(labels):
    label_map = outcome(lambda: text_classification.LabelMap.from_labels(labels, True, "train.csv"), "train.csv")
    if label_map is not None:
        assert np.isfinite(label_map.encode(labels, "train.csv")).all()


@CHEAP
@given(mutated(json.dumps({"names": ["neg", "pos"], "regression": False}).encode()) | st.binary(max_size=30))
@example(b'{"names": ["a", "\xff"], "regression": false}')
@example(b'{"names": ["a", "a"], "regression": false}')
@example(b'{"names": [], "regression": false}')
@example(b"[" * 100_000)
def test_saved_label_maps_load_or_name_the_file(scratch, content):
    path = _write(scratch / "labels.json", content)
    label_map = outcome(lambda: text_classification.LabelMap.load(path), path)
    if label_map is not None:
        assert label_map.names and len(set(label_map.names)) == len(label_map.names)


# ---------------------------------------------------------------- CoNLL


VALID_CONLL = b"-DOCSTART- -X- O\n\nJohn NNP B-PER\nSmith NNP I-PER\nwon VBD O\n\nThe DT O\nteam NN O\n"


def _word_lines(data: bytes) -> int:
    """Lines of a CoNLL file that hold a word: not blank and not -DOCSTART-."""
    fields = [re.split(r"[ \t]+", line.strip()) for line in universal_lines(data)]
    return sum(1 for f in fields if f != [""] and f[0] != "-DOCSTART-")


@COSTLY
@given(malformed(VALID_CONLL), st.sampled_from([-1, 1, 2, -2, None]))
@example(b"\xef\xbb\xbf" + VALID_CONLL, -1)     # the BOM made "-DOCSTART-" a word
def test_conll_files_read_or_name_file_and_line(scratch, bert_tok, content, tag_column):
    path = _write(scratch / "ner.txt", content)
    sentences = outcome(lambda: conll.read_conll(path, tag_column), path)
    if sentences is None:
        return
    assert sum(len(s.words) for s in sentences) == _word_lines(content)
    for s in sentences:
        assert s.words and len(s.words) == len(s.tags) and s.where.startswith(f"{path}:")
        for word in s.words + s.tags:
            assert word and not re.search(r"[ \t\r\n]", word)
            word.encode("utf-8")   # no lone surrogates from undecodable bytes
    names = conll.tag_names(sentences)
    ds = conll.TokenClassificationDataset(sentences, bert_tok, 16, 0, names)
    predicted = ds.word_predictions(ds.labels)
    assert [len(p) for p in predicted] == [len(s.words) for s in sentences]


def test_conll_with_a_bom_and_crlf_reads_as_without(scratch):
    want = conll.read_conll(_write(scratch / "plain.txt", VALID_CONLL))
    for variant in (b"\xef\xbb\xbf" + VALID_CONLL, VALID_CONLL.replace(b"\n", b"\r\n")):
        got = conll.read_conll(_write(scratch / "variant.txt", variant))
        assert [(s.words, s.tags) for s in got] == [(s.words, s.tags) for s in want]


# ---------------------------------------------------------------- SQuAD


def _squad_json(answers=None) -> dict:
    answers = [{"text": "won", "answer_start": 9}] if answers is None else answers
    qa = {"id": "q1", "question": "who won ?", "answers": answers}
    paragraph = {"context": "the team won in paris", "qas": [qa]}
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [paragraph]}]}


@st.composite
def squad_like(draw) -> bytes:
    """SQuAD JSON whose parts may each be replaced by any JSON value (NaN included)."""
    def maybe(value):
        return draw(st.just(value) | st.just(value) | JSON_VALUES)
    answer = {"text": maybe("won"), "answer_start": draw(st.sampled_from([9, 0, -12, -11, True]) | JSON_VALUES)}
    qa = maybe({"id": maybe("q1"), "question": maybe("who won ?"), "answers": maybe([answer])})
    paragraph = maybe({"context": maybe("the team won in paris"), "qas": maybe([qa])})
    root = maybe({"data": maybe([maybe({"paragraphs": maybe([paragraph])})])})
    return json.dumps(root).encode()


def _check_squad(examples, tokenizer) -> None:
    ids = [e.id for e in examples]
    assert examples and len(set(ids)) == len(ids)
    for e in examples:
        assert isinstance(e.id, str) and e.question.strip() and e.context.strip()
        for text, start in zip(e.answer_texts, e.answer_starts, strict=True):
            assert type(start) is int and 0 <= start and text and e.context[start:start + len(text)] == text
    ds = squad.QADataset(examples, tokenizer, 32, 0, doc_stride=8, max_query_len=8)
    assert (ds.start_positions <= ds.end_positions).all() and ds.end_positions.max() < 32


@COSTLY
@given(squad_like() | malformed(json.dumps(_squad_json()).encode()))
@example(json.dumps(_squad_json(answers=[{"text": "the", "answer_start": -21}])).encode())  # a negative start matched
@example(json.dumps(_squad_json(answers=[{"text": "he", "answer_start": True}])).encode())   # True is 1
@example(json.dumps(_squad_json(answers=5)).encode())                                       # iterated an int
@example(b"\xef\xbb\xbf" + json.dumps(_squad_json()).encode())
@example(b'{"data": ' + b"[" * 100_000)
@example(b'{"data": [' + b"1" * 5000 + b"]}")
def test_squad_files_read_or_name_the_file(scratch, bert_tok, content):
    path = _write(scratch / "qa.json", content)
    examples = outcome(lambda: squad.read_squad(path), path)
    if examples is not None:
        _check_squad(examples, bert_tok)


def test_squad_with_a_bom_reads_as_without(scratch):
    plain = json.dumps(_squad_json(), indent=1).encode()
    want = squad.read_squad(_write(scratch / "plain.json", plain))
    assert squad.read_squad(_write(scratch / "bom.json", b"\xef\xbb\xbf" + plain.replace(b"\n", b"\r\n"))) == want


# ---------------------------------------------------------------- tokenizers


@COSTLY
@given(data=st.data())
def test_tokenizer_json_loads_or_names_the_file(scratch, bpe_file, data):
    content = data.draw(malformed(bpe_file.read_bytes()) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
    path = _write(scratch / "tokenizer.json", content)
    tokenizer = outcome(lambda: tokenizer_lib.load(path), path)
    if tokenizer is not None:
        tokenizer.encode("the team won")


@COSTLY
@given(data=st.data())
def test_vocab_txt_loads_or_names_the_file(scratch, vocab_file, data):
    tokens = st.sampled_from(list(wordpiece.BERT_SPECIALS) + WORDS + ["", " "]) | st.text(max_size=4)
    content = data.draw(malformed(vocab_file.read_bytes()) |
                        st.lists(tokens).map(lambda tokens: "\n".join(tokens).encode()))
    path = _write(scratch / "garbage_vocab.txt", content)
    tokenizer = outcome(lambda: wordpiece.load_vocab(path, lowercase=True), path)
    if tokenizer is None:
        return
    vocab = tokenizer.get_vocab()
    assert sorted(vocab.values()) == list(range(tokenizer.get_vocab_size()))   # ids fit the embedding
    tokenizer.encode("the team won")


def test_vocab_txt_with_repeated_tokens_or_a_bom(scratch):
    """A repeated token left an id gap, so the largest id was >= get_vocab_size()."""
    path = _write(scratch / "dup_vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nfilm\nfilm\nplot\n")
    assert f"{path}:7" in rejected(lambda: wordpiece.load_vocab(path, True), path)
    path = _write(scratch / "bom_vocab.txt", b"\xef\xbb\xbf[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nfilm\n")
    assert wordpiece.special_tokens(wordpiece.load_vocab(path, True)).pad == 0


# ---------------------------------------------------------------- pre-training text


CORPUS = ("\n\n".join(" ".join(WORDS[i:] + WORDS[:i]) + " .\n" + " ".join(WORDS[:i]) for i in range(12))).encode()


def _pretraining_config(task: str, source: str, tokenizer: Path):
    cfg = defaults.get_config()
    cfg.task, cfg.model.family = task, "gpt2" if task == "causal_lm" else "bert"
    cfg.model.update(max_len=8, vocab_size=512)
    cfg.data.update(source=source, tokenizer=str(tokenizer), validation_fraction=0.2)
    return cfg


@COSTLY
@given(malformed(CORPUS), st.sampled_from(["causal_lm", "masked_lm"]), st.booleans())
@example(b"\x00\x01\x02 \x7f\n\n\x00", "masked_lm", True)   # text that tokenizes to nothing
def test_pretraining_text_reads_or_names_the_source(scratch, bpe_file, vocab_file, content, task, nsp):
    path = _write(scratch / "corpus.txt", content)
    cfg = _pretraining_config(task, str(path), bpe_file if task == "causal_lm" else vocab_file)
    cfg.data.nsp = nsp
    with tempfile.TemporaryDirectory() as workdir:
        prepared = outcome(lambda: pipeline.prepare(cfg, Path(workdir)), "data.source")
    if prepared is None:
        return
    for split in prepared.splits.values():
        assert len(split) > 0
        batch = split.batch(np.arange(min(len(split), 2)))
        ids = batch["inputs"] if task == "causal_lm" else batch["input_ids"]
        assert 0 <= ids.min() and ids.max() < prepared.tokenizer.get_vocab_size()


def test_a_bom_is_not_part_of_the_corpus(scratch):
    path = _write(scratch / "bom_corpus.txt", b"\xef\xbb\xbfdef f():\n    return 1\n")
    assert corpus.read_documents(str(path)) == ["def f():\n    return 1\n"]


@CHEAP
@given(st.lists(st.sampled_from(["corpus.txt", "*.txt", "missing.txt", "[", "**", "", " ", "a\x00b"]) |
                st.text(alphabet=string.ascii_letters + "*?[]{}!-_ ", max_size=6), max_size=3))
def test_source_lists_resolve_or_name_the_pattern(scratch, names):
    _write(scratch / "corpus.txt", CORPUS)
    source = ",".join(f"{scratch}/{name}" for name in names)
    files = outcome(lambda: corpus.source_files(source), "data.source")
    if files is not None:
        assert files and all(f.is_file() for f in files)


# ---------------------------------------------------------------- data.skip_bad_records


BAD_TSV = b"label\tsentence\n1\tgood\n0\n1\tgreat\tfun\n0\tbad\n1\t  \n\xff\tnope\n"   # lines 3, 4, 6, 7 are bad


def test_skip_bad_records_skips_counts_and_reports_classification_rows(scratch, capsys):
    path = _write(scratch / "skip.tsv", BAD_TSV)
    assert f"{path}:3:" in rejected(lambda: text_classification.read_examples(path, "sentence"), path)
    examples = text_classification.read_examples(path, "sentence", skip_bad_records=True)
    assert (examples.texts, examples.labels) == (["good", "bad"], ["1", "0"])
    report = capsys.readouterr().err.strip().splitlines()
    assert len(report) == 1 and report[0].startswith(f"{path}: skipped 4 malformed rows (the first at line 3: ")

    path = _write(scratch / "skip.jsonl", b'{"label": "1", "sentence": "good"}\n{"label": \n[1]\n'
                                          b'{"label": "0", "sentence": "bad"}\n{"label": "0"}\n')
    examples = text_classification.read_examples(path, "sentence", skip_bad_records=True)
    assert examples.texts == ["good", "bad"]
    report = capsys.readouterr().err.strip().splitlines()
    assert len(report) == 1 and report[0].startswith(f"{path}: skipped 3 malformed rows (the first at line 2: ")


def test_skip_bad_records_still_fails_when_nothing_is_left(scratch, capsys):
    path = _write(scratch / "allbad.tsv", b"label\tsentence\n1\n0\t \n")
    message = rejected(lambda: text_classification.read_examples(path, "sentence", skip_bad_records=True), path)
    assert message.startswith(f"{path}: no rows left after skipping 2 malformed rows (the first at line 2: ")
    path = _write(scratch / "allbad.txt", b"John B-PER\nSmith\n\n\xff O\n")
    message = rejected(lambda: conll.read_conll(path, skip_bad_records=True), path)
    assert message.startswith(f"{path}: no sentences left after skipping 2 malformed sentences (the first at line 2: ")
    assert capsys.readouterr().err == ""


def test_skip_bad_records_skips_whole_conll_sentences(scratch, capsys):
    content = b"John NNP B-PER\nSmith NNP\n\nThe DT O\nteam NN O\n\nwon VBD O \xff\n\nParis NNP B-LOC\n"
    path = _write(scratch / "skip_ner.txt", content)
    assert f"{path}:2:" in rejected(lambda: conll.read_conll(path), path)
    sentences = conll.read_conll(path, skip_bad_records=True)
    assert [s.words for s in sentences] == [["The", "team"], ["Paris"]]
    assert sentences[1].where == f"{path}:9"
    report = capsys.readouterr().err.strip().splitlines()
    assert len(report) == 1 and report[0].startswith(f"{path}: skipped 2 malformed sentences (the first at line 2: ")


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
@CHEAP
@given(data=st.data())
def test_skipping_keeps_every_good_row(scratch, suffix, data):
    """With skipping on, a file reads as the rows it would read if the bad ones were deleted."""
    content = data.draw(malformed(VALID_CLASSIFICATION[suffix]), label="content")
    path = _write(scratch / f"skip{suffix}", content)
    examples = outcome(lambda: text_classification.read_examples(path, "sentence", skip_bad_records=True), path)
    strict = outcome(lambda: text_classification.read_examples(path, "sentence"), path)
    if strict is not None:   # a clean file reads the same either way
        assert examples is not None and (examples.texts, examples.labels) == (strict.texts, strict.labels)
    if examples is not None:
        assert all(t.strip() for t in examples.texts) and len(examples.labels) == len(examples)


def test_skip_bad_records_through_the_pipeline(scratch, vocab_file, capsys):
    cfg = defaults.get_config()
    cfg.task, cfg.model.family, cfg.model.max_len = "classification", "bert", 16
    train = _write(scratch / "pipe_train.tsv", BAD_TSV)
    cfg.data.update(train=str(train), validation=str(train), tokenizer=str(vocab_file))
    with tempfile.TemporaryDirectory() as workdir:
        assert f"{train}:3:" in rejected(lambda: pipeline.prepare(cfg, Path(workdir)), train)
    cfg.data.skip_bad_records = True
    with tempfile.TemporaryDirectory() as workdir:
        prepared = pipeline.prepare(cfg, Path(workdir))
    assert len(prepared.splits["train"]) == 2 and prepared.label_names == ["0", "1"]
    assert len(capsys.readouterr().err.strip().splitlines()) == 2   # the file, read as train and as validation


def test_skip_bad_records_through_flax_lm_train(scratch):
    from test_cli import flax_lm
    train = _write(scratch / "cli_train.tsv", b"label\tsentence\n" + b"0\tbad film\n1\tgood film\n" * 4 +
                   b"0\n1\tfun\tfilm\n")
    args = ["train", "--config", "sst2", "--config.model.d_model=32", "--config.model.n_layers=1",
            "--config.model.n_heads=2", "--config.model.d_ff=64", "--config.model.vocab_size=200",
            "--config.model.max_len=16", "--config.data.seq_len=16", "--config.train.batch_size=8",
            "--config.train.progress_bar=false", "--config.optim.warmup_steps=1", "--config.train.steps=1",
            "--config.train.eval_every=1", f"--config.data.train={train}", f"--config.data.validation={train}",
            "--config.data.test="]
    refused = flax_lm(*args, "--workdir", str(scratch / "cli_refused"))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"flax-lm train: error: {train}:10: the row has 1 fields, the header has 2 (['label', 'sentence']); "
        f"fix the row or the delimiter"]
    done = flax_lm(*args, "--config.data.skip_bad_records=true", "--workdir", str(scratch / "cli_skipped"))
    assert done.returncode == 0, done.stderr
    reports = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert reports == [f"{train}: skipped 2 malformed rows (the first at line 10: the row has 1 fields, the header "
                       f"has 2 (['label', 'sentence']); fix the row or the delimiter); data.skip_bad_records is set"
                       ] * 2   # read as the train and as the validation split
