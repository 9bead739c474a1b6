"""Fine-tuning data: classification files and label maps, CoNLL NER, SQuAD windows and answers."""

import json
import string

import numpy as np
import pytest
from conftest import SHARED_DATA
from tokenizers import Tokenizer, processors
from tokenizers.implementations import BertWordPieceTokenizer

from flax_lm.data import conll, squad, text_classification
from flax_lm.errors import UserError

WORDS = str.split("the a an of to and is was in on at for with not no very good bad movie film great awful plot "
                  "actor story fun dull what where who when which how did does city river born year team won game "
                  "paris london france john smith united nations")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """A BERT vocab.txt: specials, whole words, and single characters (plain and ##) for everything else."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + chars + ["##" + c for c in chars]
    path = tmp_path_factory.mktemp("vocab")
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="module")
def bert_tok(vocab_dir):
    """The Rust tokenizer with BERT's normalizer, pre-tokenizer and [CLS]/[SEP] post-processor."""
    return BertWordPieceTokenizer(str(vocab_dir / "vocab.txt"), lowercase=True)._tokenizer


# ---------------------------------------------------------------- classification


def _write_rows(path, rows):
    """rows: list of dicts with the same keys, written as CSV, TSV or JSON lines by the file's suffix."""
    keys = list(rows[0])
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text(sep.join(keys) + "\n" + "".join(sep.join(str(r[k]) for k in keys) + "\n" for r in rows))
    return path


PAIRS = [
    {"premise": "the movie was great fun", "hypothesis": "good film", "label": "entailment"},
    {"premise": "john smith was born in paris , france in the year 1901 and won the game with his team",
     "hypothesis": "john was not born in london , which is a very big city on a river", "label": "contradiction"},
    {"premise": "what a dull plot", "hypothesis": "the story is awful", "label": "neutral"},
]


def test_classification_pairs_match_transformers(tmp_path, vocab_dir, bert_tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    path = _write_rows(tmp_path / "train.tsv", PAIRS)
    examples = text_classification.read_examples(path, "premise", "hypothesis")
    label_map = text_classification.LabelMap.from_labels(examples.labels, regression=False)
    assert label_map.names == ["contradiction", "entailment", "neutral"]
    max_len = 24   # the second pair needs "longest_first" truncation
    ds = text_classification.ClassificationDataset(examples, bert_tok, max_len, pad_id=0, label_map=label_map)
    batch = ds.batch(np.array([2, 0, 1]))
    want = hf([PAIRS[i]["premise"] for i in (2, 0, 1)], [PAIRS[i]["hypothesis"] for i in (2, 0, 1)],
              padding="max_length", truncation=True, max_length=max_len)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (3, max_len)
        np.testing.assert_array_equal(batch[key], np.asarray(want[key]), err_msg=key)
    assert batch["attention_mask"][2].all() and not batch["attention_mask"][1].all()
    np.testing.assert_array_equal(batch["labels"], [2, 1, 0])
    assert batch["labels"].dtype == np.int32
    np.testing.assert_array_equal(batch["weights"], np.ones(3, np.float32))
    assert bert_tok.truncation is None and bert_tok.padding is None   # the caller's tokenizer is untouched


def test_single_text_matches_transformers_and_predict_files_need_no_labels(tmp_path, vocab_dir, bert_tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    path = _write_rows(tmp_path / "test.jsonl", [{"sentence": p["premise"]} for p in PAIRS])
    examples = text_classification.read_examples(path, "sentence", require_labels=False)
    assert examples.labels is None and examples.pairs is None
    ds = text_classification.ClassificationDataset(examples, bert_tok, 16, pad_id=0, label_map=None)
    batch = ds.batch(np.arange(3))
    want = hf([p["premise"] for p in PAIRS], padding="max_length", truncation=True, max_length=16)
    np.testing.assert_array_equal(batch["input_ids"], np.asarray(want["input_ids"]))
    np.testing.assert_array_equal(batch["labels"], np.zeros(3, np.int32))


def test_csv_tsv_and_jsonl_read_alike_and_tsv_keeps_quotes(tmp_path):
    rows = [{"label": "1", "sentence": 'a "quoted start'}, {"label": "0", "sentence": "it 's ok , i guess"}]
    got = {}
    for suffix in (".tsv", ".jsonl"):
        got[suffix] = text_classification.read_examples(_write_rows(tmp_path / f"d{suffix}", rows), "sentence")
    (tmp_path / "d.csv").write_text('label,sentence\n1,"a ""quoted start"\n0,"it \'s ok , i guess"\n')
    got[".csv"] = text_classification.read_examples(tmp_path / "d.csv", "sentence")
    for examples in got.values():
        assert examples.texts == [r["sentence"] for r in rows] and examples.labels == ["1", "0"]


def test_label_map_order_save_load_and_regression(tmp_path):
    lm = text_classification.LabelMap.from_labels(["10", "2", "1", "2"], regression=False)
    assert lm.names == ["1", "2", "10"] and lm.num_labels == 3
    np.testing.assert_array_equal(lm.encode(["10", "1"], "dev.tsv"), [2, 0])
    assert text_classification.LabelMap.from_labels(["pos", "neg", "10"], False).names == ["10", "neg", "pos"]
    lm.save(tmp_path / "labels.json")
    assert json.loads((tmp_path / "labels.json").read_text()) == {"names": ["1", "2", "10"], "regression": False}
    assert text_classification.LabelMap.load(tmp_path / "labels.json") == lm
    with pytest.raises(UserError, match=r"dev.tsv: label '3' is not one of the training labels \['1', '2', '10'\]"):
        lm.encode(["1", "3"], "dev.tsv")

    reg = text_classification.LabelMap.from_labels(["0.5", "3", "4.25"], regression=True)
    assert reg.names == ["score"] and reg.regression
    np.testing.assert_array_equal(reg.encode(["1.5", "2"], "x"), np.asarray([1.5, 2.0], np.float32))
    with pytest.raises(UserError, match="not a number"):
        reg.encode(["high"], "dev.csv")


def test_regression_labels_are_float32(tmp_path, bert_tok):
    path = _write_rows(tmp_path / "sts.csv", [{"a": "good movie", "b": "great film", "score": "4.5"},
                                                {"a": "bad plot", "b": "what a team", "score": "0.25"}])
    examples = text_classification.read_examples(path, "a", "b", label_column="score")
    lm = text_classification.LabelMap.from_labels(examples.labels, regression=True)
    batch = text_classification.ClassificationDataset(examples, bert_tok, 12, 0, lm).batch(np.arange(2))
    assert batch["labels"].dtype == np.float32
    np.testing.assert_array_equal(batch["labels"], [4.5, 0.25])


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("none.tsv", None, {}, "does not exist"),
    ("empty.tsv", "", {}, "has no rows"),
    ("header.csv", "label,sentence\n", {}, "has no rows"),
    ("cols.tsv", "label\ttext\n1\thi\n", {}, r"has no column 'sentence'; its columns are \['label', 'text'\]"),
    ("nolabel.tsv", "sentence\nhi\n", {}, "has no column 'label'"),
    ("short.tsv", "label\tsentence\n1\tgood\n0\n", {}, r"short.tsv:3: the row has 1 fields, the header has 2"),
    ("blank.csv", "label,sentence\n1,good\n0,  \n", {}, r"blank.csv:3: 'sentence' is empty"),
    ("bad.jsonl", '{"label": 1, "sentence": "x"}\n{"label": 0,\n', {}, r"bad.jsonl:2: not valid JSON"),
    ("miss.jsonl", '{"label": 1, "sentence": "x"}\n{"label": 0}\n', {}, r"miss.jsonl:2: the row has no 'sentence'"),
    ("arr.json", '[{"label": 1, "sentence": "x"}]\n', {}, "is a JSON array"),
    ("x.txt", "a\n", {}, "a .txt file holds texts alone"),
    ("x.xlsx", "a\n", {}, "unknown file type"),
    ("pair.tsv", "label\tsentence\n1\tx\n", {"text_pair_column": "s2"}, "has no column 's2'"),
])
def test_bad_classification_files_are_one_line_errors(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        text_classification.read_examples(path, "sentence", **kwargs)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_label_map_needs_two_classes():
    with pytest.raises(UserError, match="at least two"):
        text_classification.LabelMap.from_labels(["1", "1"], regression=False, path="train.tsv")


def test_sst2_reads_and_dev_labels_encode_with_the_train_map(bert_tok):
    sst2 = SHARED_DATA / "sst2"
    if not (sst2 / "dev.tsv").is_file():
        pytest.skip(f"shared data not found at {sst2}")
    train = text_classification.read_examples(sst2 / "train.tsv", "sentence")
    dev = text_classification.read_examples(sst2 / "dev.tsv", "sentence")
    assert (len(train), len(dev)) == (67_349, 872)
    label_map = text_classification.LabelMap.from_labels(train.labels, regression=False)
    assert label_map.names == ["0", "1"]
    ds = text_classification.ClassificationDataset(dev, bert_tok, 64, pad_id=0, label_map=label_map)
    batch = ds.batch(np.arange(len(dev)))
    assert batch["input_ids"].shape == (872, 64) and (batch["input_ids"][:, 0] == 2).all()
    assert 0.4 < batch["labels"].mean() < 0.6


# ---------------------------------------------------------------- CoNLL


CONLL = """-DOCSTART- -X- -X- O

John NNP B-PER
Smith NNP I-PER
visited VBD O
Parisville NNP B-LOC
. . O

The DT O
team NN O
won VBD O
"""


def test_conll_reads_sentences_and_labels_first_subwords(tmp_path, bert_tok):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    sentences = conll.read_conll(path)
    assert [s.words for s in sentences] == [["John", "Smith", "visited", "Parisville", "."], ["The", "team", "won"]]
    assert sentences[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "O"] and sentences[1].where == f"{path}:9"
    names = conll.tag_names(sentences)
    assert names == ["O", "B-LOC", "B-PER", "I-PER"]
    ds = conll.TokenClassificationDataset(sentences, bert_tok, 24, 0, names)
    batch = ds.batch(np.array([0, 1]))
    tokens = [bert_tok.id_to_token(i) for i in batch["input_ids"][0]]
    # "visited" is not in the vocab (7 characters), "parisville" is "paris" + 5 characters: first ones labelled
    assert tokens[:6] == ["[CLS]", "john", "smith", "v", "##i", "##s"]
    assert tokens[10:12] == ["paris", "##v"]
    first = [1, 2, 3, 10, 16]
    np.testing.assert_array_equal(np.flatnonzero(batch["label_weights"][0]), first)
    np.testing.assert_array_equal(batch["labels"][0, first], [2, 3, 0, 1, 0])
    assert batch["labels"][0].sum() == 6 and batch["label_weights"][1].sum() == 3
    assert batch["labels"].dtype == np.int32 and batch["label_weights"].dtype == np.float32
    assert batch["weights"].shape == (2,)
    # feeding the labels back as predictions gives the gold tags; words cut by truncation become "O"
    assert ds.word_predictions(ds.labels) == [s.tags for s in sentences]
    cut = conll.TokenClassificationDataset(sentences, bert_tok, 8, 0, names)
    assert cut.word_predictions(cut.labels)[0] == ["B-PER", "I-PER", "O", "O", "O"]
    assert cut.label_weights[0].sum() == 3


@pytest.mark.parametrize("content, kwargs, message", [
    ("a B\nb C D\n", {}, r":2: 3 column\(s\) where earlier lines have 2"),
    ("word\n", {}, r":1: 1 column\(s\), need at least 2"),
    ("a X B\n", {"tag_column": 3}, r":1: 3 column\(s\), need at least 4"),
    ("-DOCSTART- O\n\n\n", {}, "has no sentences"),
    ("", {}, "has no sentences"),
])
def test_bad_conll_files_are_one_line_errors(tmp_path, content, kwargs, message):
    path = tmp_path / "ner.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        conll.read_conll(path, **kwargs)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_conll_tag_unknown_to_training_names_the_file(tmp_path, bert_tok):
    path = tmp_path / "dev.txt"
    path.write_text("a O\n\nParis B-GPE\n")
    with pytest.raises(UserError, match=rf"{path}:3: tag 'B-GPE' is not one of the training tags"):
        conll.TokenClassificationDataset(conll.read_conll(path), bert_tok, 8, 0, ["O", "B-LOC"])


def test_conll2003_dev_round_trips_to_word_tags(tmp_path):
    seqeval = pytest.importorskip("seqeval.metrics")
    dev_path = SHARED_DATA / "conll2003" / "dev.txt"
    if not dev_path.is_file():
        pytest.skip(f"shared data not found at {dev_path}")
    sentences = conll.read_conll(dev_path)
    assert len(sentences) == 3250
    names = conll.tag_names(sentences)
    assert names[0] == "O" and len(names) == 9
    trainer = BertWordPieceTokenizer(lowercase=False)
    trainer.train_from_iterator((" ".join(s.words) for s in sentences), vocab_size=3000)
    trainer.save_model(str(tmp_path))
    tok = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=False)._tokenizer
    ds = conll.TokenClassificationDataset(sentences, tok, 128, 0, names)
    predicted = ds.word_predictions(ds.labels)
    whole = [i for i, first in enumerate(ds.first_token) if (first >= 0).all()]
    assert len(whole) > 3200
    assert [predicted[i] for i in whole] == [sentences[i].tags for i in whole]
    assert seqeval.f1_score([sentences[i].tags for i in whole], [predicted[i] for i in whole]) == 1.0


# ---------------------------------------------------------------- SQuAD


def _squad_file(path, paragraphs):
    """paragraphs: [(context, [(id, question, [(answer, start), ...]), ...]), ...] written as SQuAD v1.1."""
    data = [{"title": "t", "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": s}
                                                                             for a, s in answers]}
                                     for qid, q, answers in qas]} for context, qas in paragraphs]}]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def _long_context():
    """~150 words, every one a single token; returns (context, [(id, question, [(answer, start)]), ...])."""
    rng = np.random.default_rng(0)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), 150)]
    context = " ".join(words)
    qas = []
    # 4-word answers starting every 3rd word: wherever a window ends, some answer straddles its edge
    for n, (first, length) in enumerate([(i, 4) for i in range(0, 147, 3)] + [(77, 1), (40, 2)]):
        start = len(" ".join(words[:first])) + (1 if first else 0)
        answer = " ".join(words[first:first + length])
        assert context[start:start + len(answer)] == answer
        qas.append((f"q{n}", f"where is the {words[first]} ?", [(answer, start)]))
    return context, qas


def _one_hot_logits(ds):
    start = np.zeros(ds.input_ids.shape, np.float32)
    end = np.zeros(ds.input_ids.shape, np.float32)
    rows = np.arange(len(ds))
    start[rows, ds.start_positions] = 1.0
    end[rows, ds.end_positions] = 1.0
    return start, end


@pytest.mark.parametrize("roberta_style", [False, True])
def test_squad_windows_label_and_recover_every_answer(tmp_path, bert_tok, roberta_style):
    tok = Tokenizer.from_str(bert_tok.to_str())
    if roberta_style:   # <s> A </s></s> B </s>, every type id 0: positions must come from sequence ids
        tok.post_processor = processors.RobertaProcessing(("[SEP]", 3), ("[CLS]", 2))
    context, qas = _long_context()
    path = _squad_file(tmp_path / "dev.json", [(context, qas), ("john smith won", [("s0", "who won ?",
                                                                                   [("john smith", 0)])])])
    examples = squad.read_squad(path)
    assert [e.id for e in examples] == [q[0] for q in qas] + ["s0"]
    ds = squad.QADataset(examples, tok, max_len=48, pad_id=0, doc_stride=16, max_query_len=12)
    per_example = np.bincount(ds.example_index)
    assert per_example[0] >= 4 and per_example[-1] == 1   # the long context needs several windows

    batch = ds.batch(np.arange(len(ds)))
    assert batch["start_positions"].dtype == np.int32 and batch["input_ids"].shape == (len(ds), 48)
    n_partial = 0
    for f in range(len(ds)):
        example = examples[ds.example_index[f]]
        answer, start_char = example.answer_texts[0], example.answer_starts[0]
        end_char = start_char + len(answer)
        in_window = ds.offsets[f][ds.sequence_ids[f] == 1]
        whole = in_window[0, 0] <= start_char and in_window[-1, 1] >= end_char
        n_partial += not whole and in_window[0, 0] < end_char and in_window[-1, 1] > start_char
        s, e = ds.start_positions[f], ds.end_positions[f]
        if whole:
            assert example.context[ds.offsets[f, s, 0]:ds.offsets[f, e, 1]] == answer
        else:
            assert s == e == 0
    assert n_partial > 0   # some answer straddles a window edge: CLS there, labelled in another window
    predictions = ds.postprocess(*_one_hot_logits(ds))
    assert predictions == {e.id: e.answer_texts[0] for e in examples}
    assert ds.references["q1"] == [qas[1][2][0][0]]


def test_answer_across_a_window_boundary_is_cls_in_the_window_that_cuts_it(tmp_path, bert_tok):
    words = [WORDS[i % len(WORDS)] for i in range(60)]
    context = " ".join(words)
    # window 0 holds context tokens 0..room-1; an answer over tokens room-2..room+1 is cut by it
    question = "where ?"
    max_len, stride = 32, 8
    room = max_len - 3 - 2   # [CLS] q q [SEP] ... [SEP]
    first = room - 2
    answer = " ".join(words[first:first + 4])
    start = len(" ".join(words[:first])) + 1
    examples = squad.read_squad(_squad_file(tmp_path / "b.json", [(context, [("b", question, [(answer, start)])])]))
    ds = squad.QADataset(examples, bert_tok, max_len, pad_id=0, doc_stride=stride, max_query_len=8)
    assert ds.start_positions[0] == ds.end_positions[0] == 0
    context_0 = np.flatnonzero(ds.sequence_ids[0] == 1)
    assert len(context_0) == room and ds.offsets[0, context_0[-1], 1] > start   # part of it is in window 0
    assert ds.start_positions[1] > 0
    assert context[ds.offsets[1, ds.start_positions[1], 0]:ds.offsets[1, ds.end_positions[1], 1]] == answer
    assert ds.postprocess(*_one_hot_logits(ds)) == {"b": answer}


def test_squad_windows_match_transformers_overflow(tmp_path, vocab_dir, bert_tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    context, qas = _long_context()
    examples = squad.read_squad(_squad_file(tmp_path / "d.json", [(context, qas[:2])]))
    ds = squad.QADataset(examples, bert_tok, max_len=40, pad_id=0, doc_stride=10, max_query_len=12)
    want = hf([e.question for e in examples], [e.context for e in examples], truncation="only_second",
              max_length=40, stride=10, return_overflowing_tokens=True, padding="max_length")
    np.testing.assert_array_equal(ds.input_ids, np.asarray(want["input_ids"]))
    np.testing.assert_array_equal(ds.token_type_ids, np.asarray(want["token_type_ids"]))
    np.testing.assert_array_equal(ds.example_index, np.asarray(want["overflow_to_sample_mapping"]))


def test_long_questions_are_cut_to_max_query_len(tmp_path, bert_tok):
    question = "what " * 30 + "?"
    examples = squad.read_squad(_squad_file(tmp_path / "q.json", [("the team won", [("x", question, [("won", 9)])])]))
    ds = squad.QADataset(examples, bert_tok, max_len=32, pad_id=0, doc_stride=4, max_query_len=10)
    assert len(ds) == 1 and (ds.sequence_ids[0] == 0).sum() == 10
    assert ds.postprocess(*_one_hot_logits(ds)) == {"x": "won"}


def test_postprocess_respects_max_answer_len_and_order(tmp_path, bert_tok):
    context = "the team won the game in paris"
    examples = squad.read_squad(_squad_file(tmp_path / "p.json", [(context, [("x", "where ?", [("paris", 25)])])]))
    ds = squad.QADataset(examples, bert_tok, max_len=24, pad_id=0, doc_stride=4, max_query_len=4)
    ctx = np.flatnonzero(ds.sequence_ids[0] == 1)   # the, team, won, the, game, in, paris
    start, end = np.zeros((1, 24)), np.zeros((1, 24))
    start[0, ctx[1]], end[0, ctx[6]] = 5.0, 5.0    # "team ... paris": 6 tokens
    start[0, ctx[4]], end[0, ctx[0]] = 4.0, 4.0    # end before start: never chosen
    end[0, ctx[4]] = 1.0
    start[0, 0] = end[0, 0] = 100.0                # [CLS] is not in the context
    assert ds.postprocess(start, end) == {"x": "team won the game in paris"}
    assert ds.postprocess(start, end, max_answer_len=5) == {"x": "game in paris"}   # 4 + 5, 3 tokens


@pytest.mark.parametrize("content, message", [
    ('{"data": [', r":1: not valid JSON"),
    ('{"data": []}', "has no questions"),
    ('{"version": "1.1"}', "has no 'data'"),
    (('{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q9", "question": "x?", '
      '"answers": [{"text": "bc", "answer_start": 0}]}]}]}]}'), r"question 'q9': answer 'bc' is not at answer_start 0"),
    (('{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q", "question": "x?", "answers": []}, '
      '{"id": "q", "question": "y?", "answers": []}]}]}]}'), "question id 'q' appears twice"),
])
def test_bad_squad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        squad.read_squad(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_doc_stride_must_leave_room(tmp_path, bert_tok):
    examples = squad.read_squad(_squad_file(tmp_path / "s.json", [("the team won", [("x", "who ?", [("won", 9)])])]))
    with pytest.raises(UserError, match="doc_stride"):
        squad.QADataset(examples, bert_tok, max_len=64, pad_id=0, doc_stride=128, max_query_len=16)
