"""`flax-lm embed`: sentence embeddings of the texts of a file, from a workdir's model.

The input is what `flax-lm predict` reads for classification: `.txt` one text a line, or a
`.csv`/`.tsv`/`.jsonl`/`.parquet` table whose `data.text_column` holds the texts. Each text is
tokenized as the model's own tokenizer does (BERT: `[CLS] text [SEP]`), cut to the imported
sentence-transformers `max_seq_length` (else `data.seq_len`, else the model's positions).
`--output`'s extension says the format: `.jsonl` one {"text", "embedding"} object a line,
`.npy` one float32 array N x D in input order.

The pooling and normalisation default to those of the sentence-transformers pipeline the
workdir was imported from (all-MiniLM-L6-v2: mean, normalised), else mean and none.
"""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from flax_lm.data import text_classification, unigram, wordpiece
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.data.pipeline import seq_len
from flax_lm.errors import UserError
from flax_lm.interop.hf_files import SENTENCE_PIPELINE
from flax_lm.models import DECODERS
from flax_lm.tasks import SentenceEmbedding
from flax_lm.tasks.embedding import POOLINGS
from flax_lm.training.evaluate import make_evaluator
from flax_lm.workdir import layout as workdir_lib
from flax_lm.workdir.run import load_run

FORMATS = (".jsonl", ".npy")


def pipeline_settings(workdir: str | Path) -> dict:
    """The workdir's embedding settings: {"pooling", "normalize", "max_seq_length"} (see the module)."""
    saved = Path(workdir) / SENTENCE_PIPELINE
    settings = {"pooling": "mean", "normalize": False, "max_seq_length": None}
    if saved.is_file():
        settings.update(json.loads(saved.read_text()))
    return settings


def embed(workdir: str | Path, input_path: str | Path, output_path: str | Path, pooling: str | None = None,
          normalize: bool | None = None, step: int | None = None) -> tuple[int, int]:
    """Writes the embedding of every text of `input_path` to `output_path`; returns (texts, dimension).
    `pooling` ("mean", "cls", "last") and `normalize` default to the workdir's (`pipeline_settings`)."""
    suffix = Path(output_path).suffix.lower()
    if suffix not in FORMATS:  # refused before the model loads
        raise UserError(f"--output {output_path}: flax-lm embed writes {', '.join(FORMATS)} files (the extension "
                        f"says the format); got {repr(suffix) if suffix else 'no extension'}")
    cfg = workdir_lib.load_config(workdir)
    settings = pipeline_settings(workdir)
    pooling = pooling or settings["pooling"]
    normalize = settings["normalize"] if normalize is None else normalize
    if pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if pooling == "cls" and cfg.model.family in DECODERS:
        raise UserError("--pooling cls: a decoder's first token sees only itself; use mean or last")
    if cfg.model.family not in ("bert", "modernbert", *DECODERS, "t5"):
        raise UserError(f"flax-lm embed: model family {cfg.model.family!r} has no embeddings")
    examples = text_classification.read_examples(input_path, cfg.data.text_column, require_labels=False,
                                                 skip_bad_records=cfg.data.skip_bad_records)
    examples = dataclasses.replace(examples, labels=None)  # a labelled file embeds too; its labels play no part
    if not len(examples):
        raise UserError(f"--input {input_path}: no texts in it")
    run, state = load_run(workdir, step)
    run.checkpointer.close()
    max_len = min(settings["max_seq_length"] or seq_len(cfg), cfg.model.max_len)
    dataset = text_classification.ClassificationDataset(examples, run.tokenizer, max_len, _pad_id(cfg, run.tokenizer),
                                                        None, dynamic_padding=True)
    outputs = make_evaluator(run, SentenceEmbedding(pooling, normalize)).outputs(state.params, dataset)
    embeddings_NxD = np.asarray(outputs["embedding"], np.float32)
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, embeddings_NxD)
        Path(output_path).write_bytes(buffer.getvalue())
    else:
        Path(output_path).write_text("".join(
            json.dumps({"text": text, "embedding": vector.tolist()}, ensure_ascii=False) + "\n"
            for text, vector in zip(examples.texts, embeddings_NxD)), encoding="utf-8")
    return embeddings_NxD.shape


def _pad_id(cfg, tokenizer) -> int:
    """The padding token: BERT's [PAD], a decoder's end of text (masked out either way), T5's <pad>."""
    if cfg.model.family in ("bert", "modernbert"):
        return wordpiece.special_tokens(tokenizer).pad
    if cfg.model.family == "t5":
        return unigram.special_ids(tokenizer)[0]
    return tokenizer_lib.eos_id(tokenizer)
