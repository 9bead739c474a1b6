"""`flax-lm predict`: label new text with a fine-tuned run.

Classification writes JSON lines (the input texts, the label and its probability, or the
score of a regression); NER writes CoNLL lines (word, tab, tag; a blank line between
sentences); QA writes SQuAD's prediction format, {question id: answer text}; seq2seq writes
one generated text a line (decoded with the run's `sample` settings).
"""

import json
from pathlib import Path

import numpy as np

from flax_lm import seq2seq_eval
from flax_lm.data import pipeline
from flax_lm.evaluate import make_evaluator
from flax_lm.run import load_run
from flax_lm.tasks import get_task


def predict(workdir: str | Path, input_path: str | Path, output_path: str | Path, step: int | None = None) -> int:
    """Labels the examples of `input_path` and writes them to `output_path`; returns how many."""
    run, state = load_run(workdir, step)
    run.checkpointer.close()
    dataset = pipeline.predict_dataset(run.cfg, pipeline.Prepared(run.tokenizer, {}, run.label_names),
                                       str(input_path))
    if run.cfg.task == "seq2seq":
        lines = (text + "\n" for text in seq2seq_eval.generated_outputs(run, state.params, dataset, len(dataset)))
    else:
        outputs = make_evaluator(run, get_task(run.cfg, run.label_names)).outputs(state.params, dataset)
        lines = _WRITERS[run.cfg.task](dataset, outputs, run.label_names)
    Path(output_path).write_text("".join(lines), encoding="utf-8")
    return len(dataset)


def _classification(dataset, outputs, label_names):
    examples = dataset.examples
    for i, text in enumerate(examples.texts):
        row = {"text": text}
        if examples.pairs is not None:
            row["text_pair"] = examples.pairs[i]
        if label_names == ["score"]:
            row["score"] = float(outputs["prediction"][i])
        else:
            label = int(outputs["prediction"][i])
            row.update(label=label_names[label], probability=float(np.asarray(outputs["probabilities"])[i, label]))
        yield json.dumps(row, ensure_ascii=False) + "\n"


def _token_classification(dataset, outputs, label_names):
    for sentence, tags in zip(dataset.sentences, dataset.word_predictions(outputs["prediction"])):
        yield "".join(f"{word}\t{tag}\n" for word, tag in zip(sentence.words, tags)) + "\n"


def _question_answering(dataset, outputs, label_names):
    yield json.dumps(dataset.postprocess(outputs["start_logits"], outputs["end_logits"]), ensure_ascii=False,
                     indent=1) + "\n"


_WRITERS = {"classification": _classification, "token_classification": _token_classification,
            "question_answering": _question_answering}
