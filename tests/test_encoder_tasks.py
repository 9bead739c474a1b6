"""Encoder tasks end to end through the command line: pre-training, fine-tuning, evaluate,
predict, export to transformers, and the one-line errors of bad data."""

import json
import re

import numpy as np
import pytest
from conftest import SHARED_DATA
from test_cli import flax_lm

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install flax_lm[torch])")
transformers = pytest.importorskip("transformers")

BERT = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=2",
        "--config.model.d_ff=64", "--config.model.vocab_size=400", "--config.train.batch_size=8",
        "--config.train.progress_bar=false", "--config.optim.warmup_steps=1", "--config.train.eval_batches=0"]
SST2, CONLL = SHARED_DATA / "sst2", SHARED_DATA / "conll2003"


@pytest.fixture
def sst_files(tmp_path):
    if not SST2.is_dir():
        pytest.skip("shared data not found")
    lines = (SST2 / "train.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:401]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join((SST2 / "dev.tsv").read_text().splitlines()[:41]) + "\n")
    return tmp_path / "train.tsv", tmp_path / "dev.tsv"


def test_bert_pretraining_with_nsp_resumes(tmp_path, shakespeare):
    work = str(tmp_path / "bert")
    args = ["train", "--config", "bert_tiny", *BERT, "--config.model.max_len=32",
            f"--config.data.source={shakespeare}",
            "--config.data.max_bytes=60000", "--config.train.eval_every=2", "--config.train.eval_batches=2",
            "--workdir", work]
    done = flax_lm(*args, "--config.train.steps=3")
    assert done.returncode == 0, done.stderr
    assert "mlm_accuracy" in done.stdout and "nsp_accuracy" in done.stdout
    more = flax_lm(*args, "--config.train.steps=4")
    assert more.returncode == 0 and "resumed from step 3" in more.stdout, more.stderr


def test_classification_finetune_evaluate_predict_export(tmp_path, sst_files):
    train, dev = sst_files
    work = tmp_path / "sst"
    done = flax_lm("train", "--config", "sst2", *BERT, f"--config.data.train={train}",
                   f"--config.data.validation={dev}", "--config.data.test=", "--config.train.steps=6",
                   "--config.train.eval_every=3", "--config.optim.warmup_steps=1", "--workdir", str(work))
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "labels.json").read_text())["names"] == ["0", "1"]
    assert (work / "best" / "metric.json").is_file()
    ev = flax_lm("evaluate", "--workdir", str(work), "--split", "dev")
    assert ev.returncode == 0, ev.stderr
    summary, where = ev.stdout.strip().splitlines()[-2:]   # headline metrics; per class only in the file
    assert re.match(r"step [36], validation: loss [0-9.]+, examples 40, accuracy ", summary), summary  # the best
    assert ", mcc " in summary and "precision/" not in summary
    assert where == f"all metrics (JSON) in {work / 'eval_validation.json'}"
    result = json.loads((work / "eval_validation.json").read_text())
    assert result["examples"] == 40 and 0 <= result["accuracy"] <= 1 and "mcc" in result and "f1/1" in result

    out = tmp_path / "pred.jsonl"
    pred = flax_lm("predict", "--workdir", str(work), "--input", str(dev), "--output", str(out))
    assert pred.returncode == 0, pred.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and {r["label"] for r in rows} <= {"0", "1"}
    _predict_reads_and_writes_by_extension(tmp_path, work, dev, rows)
    gen = flax_lm("generate", "--workdir", str(work), "--prompt", "a fine")
    assert gen.returncode == 2 and gen.stderr.count("\n") == 1, gen.stderr
    assert ("this run's task is 'classification', which does not generate text; flax-lm generate continues "
            "causal_lm, seq2seq, span_corruption runs (label text with flax-lm predict)") in gen.stderr

    hf_dir = tmp_path / "hf"
    exp = flax_lm("export", "--workdir", str(work), "--out", str(hf_dir))
    assert exp.returncode == 0, exp.stderr
    pipe = transformers.pipeline("text-classification", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu",
                                 torch_dtype=torch.float32)
    hf = pipe([r["text"] for r in rows], truncation=True, max_length=64)
    assert [h["label"] for h in hf] == [r["label"] for r in rows]
    np.testing.assert_allclose([h["score"] for h in hf], [r["probability"] for r in rows], atol=1e-4)


def _predict_reads_and_writes_by_extension(tmp_path, work, dev, rows):
    """`rows`: the JSON lines predict wrote for `dev` (a TSV with the header label, sentence)."""
    def predict(source, output):
        return flax_lm("predict", "--workdir", str(work), "--input", str(source), "--output", str(tmp_path / output))

    texts = [r["text"] for r in rows]
    (tmp_path / "texts.txt").write_text("".join(t + "\n" for t in texts))
    assert predict(tmp_path / "texts.txt", "from_txt.tsv").returncode == 0
    table = [line.split("\t") for line in (tmp_path / "from_txt.tsv").read_text().splitlines()]
    assert table[0] == ["text", "label", "probability"]
    assert [(t, label) for t, label, _ in table[1:]] == [(r["text"], r["label"]) for r in rows]
    no_header = tmp_path / "no_header.tsv"
    no_header.write_text("".join(line + "\n" for line in dev.read_text().splitlines()[1:]))
    assert predict(no_header, "labels.txt").returncode == 0
    assert (tmp_path / "labels.txt").read_text().splitlines() == [r["label"] for r in rows]
    assert predict(dev, "pred.csv").returncode == 0
    assert (tmp_path / "pred.csv").read_text().splitlines()[0] == "text,label,probability"

    (tmp_path / "texts_only.tsv").write_text("".join(t + "\n" for t in texts))
    for source, output, message in [
        (tmp_path / "texts.txt", "pred.xlsx", "--output {out}: a classification run writes .csv, .jsonl, .tsv, .txt "
                                              "files (the extension says the format); got '.xlsx'"),
        (tmp_path / "texts_only.tsv", "pred.jsonl", f"{tmp_path / 'texts_only.tsv'}: its first line [{texts[0]!r}] "
                                                    f"does not name the column 'sentence'; give a header line naming "
                                                    f"'sentence' (and 'label' if it has labels), or a .txt file of one "
                                                    f"text a line")]:
        bad = predict(source, output)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert message.format(out=tmp_path / output) in bad.stderr


def test_a_new_run_that_fails_on_its_data_leaves_no_workdir(tmp_path, sst_files):
    train, dev = sst_files
    bad_dev = tmp_path / "bad_dev.tsv"
    bad_dev.write_text(dev.read_text() + "1\tan extra\tfield\n")
    args = ["train", "--config", "sst2", *BERT, f"--config.data.train={train}", "--config.data.test=",
            "--config.train.steps=1"]
    failed = flax_lm(*args, f"--config.data.validation={bad_dev}", "--workdir", str(tmp_path / "new"))
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert f"{bad_dev}:42: the row has 3 fields" in failed.stderr
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)   # a workdir that existed keeps what was there
    failed = flax_lm(*args, f"--config.data.validation={bad_dev}", "--workdir", str(mine))
    assert failed.returncode == 2 and sorted(p.name for p in mine.iterdir()) == ["notes"]
    done = flax_lm(*args, f"--config.data.validation={dev}", "--workdir", str(mine))
    assert done.returncode == 0, done.stderr


def test_token_classification_finetune(tmp_path):
    if not CONLL.is_dir():
        pytest.skip("shared data not found")
    text = (CONLL / "train.txt").read_text().split("\n\n")
    (tmp_path / "train.txt").write_text("\n\n".join(text[:200]) + "\n")
    (tmp_path / "dev.txt").write_text("\n\n".join(text[200:240]) + "\n")
    work = tmp_path / "ner"
    done = flax_lm("train", "--config", "conll_ner", *BERT, f"--config.data.train={tmp_path / 'train.txt'}",
                   f"--config.data.validation={tmp_path / 'dev.txt'}", "--config.data.test=",
                   "--config.data.seq_len=48",
                   "--config.model.max_len=48", "--config.train.steps=4", "--config.train.eval_every=2",
                   "--workdir", str(work))
    assert done.returncode == 0, done.stderr
    assert "f1" in done.stdout
    words = tmp_path / "words.txt"
    words.write_text("EU rejects German call\n".replace(" ", "\n") + "\nPeter Blackburn\n".replace(" ", "\n"))
    out = tmp_path / "tags.txt"
    pred = flax_lm("predict", "--workdir", str(work), "--input", str(words), "--output", str(out))
    assert pred.returncode == 0, pred.stderr
    sentences = [s.splitlines() for s in out.read_text().strip().split("\n\n")]
    assert [[line.split("\t")[0] for line in s] for s in sentences] == [["EU", "rejects", "German", "call"],
                                                                         ["Peter", "Blackburn"]]


def _squad(path, answer_start, copies=1):
    context = "The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair."
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{
        "context": context, "qas": [{"id": f"q{i}", "question": "When was it built?",
                                     "answers": [{"text": "1889", "answer_start": answer_start}]}]}
        for i in range(copies)]}]}))


def test_question_answering_trains_and_scores(tmp_path):
    _squad(tmp_path / "train.json", 46, copies=8)
    work = tmp_path / "qa"
    done = flax_lm("train", "--config", "squad", *BERT, f"--config.data.train={tmp_path / 'train.json'}",
                   f"--config.data.validation={tmp_path / 'train.json'}", "--config.model.max_len=64",
                   "--config.data.doc_stride=8", "--config.data.max_query_len=16", "--config.data.seq_len=32",
                   "--config.train.steps=2", "--config.train.eval_every=1", "--config.optim.warmup_steps=1",
                   "--workdir", str(work))
    assert done.returncode == 0, done.stderr
    assert "exact_match" in done.stdout
    answers = {}
    for output in ("answers.json", "answers.tsv"):
        pred = flax_lm("predict", "--workdir", str(work), "--input", str(tmp_path / "train.json"),
                       "--output", str(tmp_path / output))
        assert pred.returncode == 0, pred.stderr
        answers[output] = (tmp_path / output).read_text()
    squad_format = json.loads(answers["answers.json"])
    assert sorted(squad_format) == [f"q{i}" for i in range(8)]
    rows = [line.split("\t") for line in answers["answers.tsv"].splitlines()]
    assert rows[0] == ["id", "answer"] and dict(rows[1:]) == squad_format


@pytest.mark.parametrize("case, expected", [
    ("no_column", "has no column 'text'"),
    ("unseen_label", "label 'maybe' is not one of the training labels"),
    ("empty", "has no rows"),
    ("bad_conll", "conll_bad.txt:3:"),
    ("bad_answer", "is not at answer_start"),
])
def test_bad_data_is_one_line(tmp_path, case, expected):
    (tmp_path / "train.tsv").write_text("label\tsentence\n0\tbad film\n1\tgood film\n")
    (tmp_path / "dev.tsv").write_text("label\tsentence\nmaybe\tso so\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "conll_bad.txt").write_text("EU NNP B-ORG\nrejects VBZ O\nGerman\n")
    _squad(tmp_path / "qa.json", 3)
    train, dev, config = tmp_path / "train.tsv", tmp_path / "dev.tsv", "sst2"
    extra = []
    if case == "no_column":
        extra = ["--config.data.text_column=text"]
    elif case == "empty":
        train = tmp_path / "empty.tsv"
    elif case == "bad_conll":
        config, train = "conll_ner", tmp_path / "conll_bad.txt"
    elif case == "bad_answer":
        config, train = "squad", tmp_path / "qa.json"
    result = flax_lm("train", "--config", config, *BERT, f"--config.data.train={train}",
                     f"--config.data.validation={dev if config == 'sst2' else train}", *extra,
                     "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
