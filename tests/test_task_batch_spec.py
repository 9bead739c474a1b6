"""Each task's batch spec (`Task.batch_spec`, what `flax-lm compile` lowers the step with) is the
shape and dtype of every array of a real batch its data pipeline makes from the same config."""

import json

import numpy as np
import pytest
from conftest import SHAKESPEARE, SHARED_DATA

from flax_lm.config import load as config
from flax_lm.data import pipeline
from flax_lm.tasks import get_task

BATCH = 8
SMALL = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=2",
         "--config.model.d_ff=64", "--config.model.vocab_size=512", "--config.model.max_len=32",
         "--config.data.seq_len=32", f"--config.train.batch_size={BATCH}"]
# task -> (a recipe of it, the overrides that make it tiny); the data options are its pipeline's
RECIPES = {
    "causal_lm": ("gpt2_tiny", []),
    "masked_lm": ("bert_tiny", []),
    "classification": ("sst2", ["--config.model.num_labels=2"]),
    "token_classification": ("conll_ner", ["--config.model.num_labels=9"]),
    "question_answering": ("squad", ["--config.data.doc_stride=8", "--config.data.max_query_len=8"]),
    "span_corruption": ("t5_tiny", ["--config.model.n_decoder_layers=2"]),
    "seq2seq": ("multi30k_en_de", ["--config.model.n_decoder_layers=2", "--config.data.target_len=16"]),
}
# variants whose batches have other arrays or dtypes
VARIANTS = [("causal_lm", ["--config.data.packing=segments"]), ("masked_lm", ["--config.data.nsp=false"]),
            ("classification", ["--config.model.num_labels=1"]), ("seq2seq", ["--config.data.dynamic_padding=true"])]


def tiny(task: str, *overrides: str):
    """The tiny recipe of `task` with `overrides` (no data paths: compile reads no data)."""
    recipe, extra = RECIPES[task]
    return config.load(recipe, [*SMALL, *extra, *overrides])


def _data(task: str, root) -> list[str]:
    """Overrides pointing `task` at a small real data set written under `root`."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    if task in pipeline.PRETRAINING:
        return [f"--config.data.source={SHAKESPEARE}", "--config.data.max_bytes=40000"]
    if task == "classification":
        lines = (SHARED_DATA / "sst2" / "train.tsv").read_text().splitlines()[:101]
        (root / "train.tsv").write_text("\n".join(lines) + "\n")
        return [f"--config.data.train={root / 'train.tsv'}", f"--config.data.validation={root / 'train.tsv'}"]
    if task == "token_classification":
        sentences = (SHARED_DATA / "conll2003" / "train.txt").read_text().split("\n\n")[:60]
        (root / "train.txt").write_text("\n\n".join(sentences) + "\n")
        return [f"--config.data.train={root / 'train.txt'}", f"--config.data.validation={root / 'train.txt'}"]
    if task == "question_answering":
        context = "The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair."
        (root / "train.json").write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{
            "context": context, "qas": [{"id": f"q{i}", "question": "When was it built?",
                                         "answers": [{"text": "1889", "answer_start": 46}]}]} for i in range(4)]}]}))
        return [f"--config.data.train={root / 'train.json'}", f"--config.data.validation={root / 'train.json'}"]
    for lang in ("en", "de"):
        lines = (SHARED_DATA / "multi30k" / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:100]
        (root / f"train.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"--config.data.train={root / 'train'}", f"--config.data.validation={root / 'train'}"]


@pytest.mark.parametrize("task, overrides", [(task, []) for task in RECIPES] + VARIANTS)
def test_the_batch_spec_is_that_of_a_real_batch(tmp_path, task, overrides):
    cfg = tiny(task, *overrides, *_data(task, tmp_path))
    prepared = pipeline.prepare(cfg, tmp_path, splits=("train",))
    train = prepared.splits["train"]
    batch = train.batch(np.arange(BATCH) % len(train))  # at full width, as a batch of the longest examples
    real = {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()}
    # the spec reads the config alone, as compile's does (no label names: no data read)
    spec = get_task(cfg).batch_spec(cfg, BATCH)
    assert {k: (x.shape, np.dtype(x.dtype)) for k, x in spec.items()} == real
    assert spec == get_task(cfg, prepared.label_names).batch_spec(cfg, BATCH)
