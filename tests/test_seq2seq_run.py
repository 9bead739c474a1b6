"""Seq2seq end to end through the command line: a tiny T5 trained on Multi30k pairs, evaluated with
BLEU and chrF, used by predict and generate, exported to transformers (whose greedy generate()
gives exactly our tokens) and imported back; T5 pre-training by span corruption; bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from flax_lm import cli
from flax_lm.workdir import run as run_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
# one decoder layer as one encoder layer: transformers 5 decodes T5 with a cache sized by the encoder's layers
TINY = ["--config.model.vocab_size=600", "--config.model.d_model=32", "--config.model.n_layers=1",
        "--config.model.n_decoder_layers=1", "--config.model.n_heads=2", "--config.model.d_ff=64",
        "--config.model.max_len=32", "--config.data.seq_len=32",
        "--config.data.target_len=32", "--config.train.steps=12", "--config.train.batch_size=8",
        "--config.train.eval_every=6", "--config.train.eval_batches=2", "--config.train.checkpoint_every=6",
        "--config.train.log_every=3", "--config.optim.warmup_steps=2", "--config.train.progress_bar=False",
        "--config.sample.max_new_tokens=10"]


def _subset(directory: Path, split: str, count: int) -> str:
    """The first `count` pairs of a Multi30k split as parallel files; returns their prefix."""
    for lang in ("en", "de"):
        lines = (MULTI30K / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:count]
        (directory / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(directory / split)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    data = [f"--config.data.train={_subset(root, 'train', 400)}",
            f"--config.data.validation={_subset(root, 'val', 24)}", f"--config.data.test={_subset(root, 'test', 16)}"]
    workdir = root / "work"
    assert cli.main(["train", "--config", "multi30k_en_de", "--workdir", str(workdir), *TINY, *data]) == 0
    return root, workdir


def test_training_reports_bleu_and_chrf(trained, capsys):
    _, workdir = trained
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
             if "eval/bleu" in line]
    assert [e["step"] for e in evals] == [6, 12]
    assert all(0.0 <= e["eval/bleu"] <= 100.0 and 0.0 <= e["eval/chrf"] <= 100.0 for e in evals)
    assert (workdir / "best").is_dir()   # the recipe keeps the best BLEU


def test_evaluate_predict_and_generate(trained, capsys):
    root, workdir = trained
    assert cli.main(["evaluate", "--workdir", str(workdir), "--split", "test"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-2]
    assert summary.startswith("step ") and ", test: loss " in summary and ", examples 16, " in summary, summary
    result = json.loads((workdir / "eval_test.json").read_text())
    assert result["split"] == "test" and result["examples"] == 16 and {"bleu", "chrf", "loss"} <= set(result)

    sources = (root / "test.en").read_text(encoding="utf-8").splitlines()
    (root / "sources.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    assert cli.main(["predict", "--workdir", str(workdir), "--input", str(root / "sources.txt"),
                     "--output", str(root / "out.txt")]) == 0
    outputs = (root / "out.txt").read_text(encoding="utf-8").splitlines()
    assert len(outputs) == len(sources)

    run, state = run_lib.load_run(workdir)
    run.checkpointer.close()
    assert outputs == run_lib.generate_texts(run, state.params, sources)
    capsys.readouterr()
    assert cli.main(["generate", "--workdir", str(workdir), "--prompt", sources[0]]) == 0
    assert capsys.readouterr().out.strip() == outputs[0].strip()   # streamed: the output alone, no echo


def test_export_loads_in_transformers_and_generates_the_same_tokens(trained, tmp_path):
    root, workdir = trained
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    run, state = run_lib.load_run(workdir)
    run.checkpointer.close()
    sources = [s for s in (root / "test.en").read_text(encoding="utf-8").splitlines()
               if len(run.tokenizer.encode(s).ids) <= run.cfg.model.max_len][:6]
    ids = [run.tokenizer.encode(s).ids for s in sources]
    assert [tokenizer(s)["input_ids"] for s in sources] == ids

    ours = run_lib.generate_ids(run, state.params, ids, max_new_tokens=10, num_beams=1, temperature=0.0)
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf.generate(**batch, max_new_tokens=10, do_sample=False, num_beams=1)
    eos, pad = run_lib.special_ids(run.cfg, run.tokenizer)
    theirs = []
    for row in out[:, 1:].tolist():
        theirs.append(row[:row.index(eos) + 1] if eos in row else row)
    assert ours == theirs

    # and back: HF -> flax_lm -> HF leaves every tensor as it was
    assert cli.main(["import", "--hf", str(tmp_path / "hf"), "--workdir", str(tmp_path / "imported")]) == 0
    assert cli.main(["export", "--workdir", str(tmp_path / "imported"), "--out", str(tmp_path / "again")]) == 0
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "again").state_dict()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(tensor, again[name]), name


def test_span_corruption_pretraining_runs_on_the_default_corpus(tmp_path, capsys):
    args = ["train", "--config", "t5_tiny", "--workdir", str(tmp_path / "w"), "--config.data.max_bytes=200000",
            "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.n_layers=1",
            "--config.model.n_decoder_layers=1",
            "--config.model.vocab_size=800", "--config.model.max_len=64", "--config.data.seq_len=64",
            "--config.train.steps=4", "--config.train.batch_size=8", "--config.optim.warmup_steps=1",
            "--config.train.progress_bar=False", "--config.train.eval_batches=2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "validation loss" in out and "0.0% padding" in out
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert all(np.isfinite(losses))


def test_parallel_files_of_different_lengths_are_one_line(tmp_path, capsys):
    (tmp_path / "p.en").write_text("a dog\na cat\nthe sun\n")
    (tmp_path / "p.de").write_text("ein Hund\neine Katze\n")
    args = ["train", "--config", "multi30k_en_de", "--workdir", str(tmp_path / "w"), *TINY,
            f"--config.data.train={tmp_path / 'p'}", f"--config.data.validation={tmp_path / 'p'}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3" in err and "2" in err and "p.en" in err
