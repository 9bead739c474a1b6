"""`flax-lm predict`: label new text with a fine-tuned run.

Each example gives one record: classification its text (and text_pair), the label and its
probability, or the score of a regression; NER its words and tags; QA the question id and answer;
seq2seq the source and the text generated for it (with the run's `sample` settings). `--output`'s
extension says how they are written: `.jsonl` one JSON object a line, `.tsv` or `.csv` a table
with a header, `.txt` the predictions alone, one a line (NER: CoNLL lines, word tab tag, a blank
line between sentences; `.conll` too); QA's `.json` is SQuAD's prediction format, {id: answer}.
"""

import csv
import io
import json
from pathlib import Path

import numpy as np

from flax_lm.training import seq2seq_eval
from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import pipeline
from flax_lm.errors import UserError
from flax_lm.training.evaluate import make_evaluator
from flax_lm.workdir.run import load_run
from flax_lm.tasks import get_task


def predict(workdir: str | Path, input_path: str | Path, output_path: str | Path, step: int | None = None) -> int:
    """Labels the examples of `input_path` and writes them to `output_path` in the format its
    extension names; returns how many."""
    task = workdir_lib.load_config(workdir).task
    write = output_writer(task, output_path)  # a wrong extension is refused before the model loads
    run, state = load_run(workdir, step)
    run.checkpointer.close()
    dataset = pipeline.predict_dataset(run.cfg, pipeline.Prepared(run.tokenizer, {}, run.label_names),
                                       str(input_path))
    if task == "seq2seq":
        outputs = seq2seq_eval.generated_outputs(run, state.params, dataset, len(dataset))
        records = [{"source": s, "output": o} for s, o in zip(dataset.sources, outputs)]
    else:
        outputs = make_evaluator(run, get_task(run.cfg, run.label_names)).outputs(state.params, dataset)
        records = _RECORDS[task](dataset, outputs, run.label_names)
    Path(output_path).write_text(write(records), encoding="utf-8")
    return len(dataset)


def output_writer(task: str, output_path: str | Path):
    """records -> the text of `output_path` for `task`, chosen by its extension; another extension
    is a UserError that lists those the task writes."""
    writers = {**_COMMON, **_OWN.get(task, {})}
    for dropped in _NOT_WRITTEN.get(task, ()):
        writers.pop(dropped)
    suffix = Path(output_path).suffix.lower()
    if suffix not in writers:
        raise UserError(f"--output {output_path}: a {task} run writes {', '.join(sorted(writers))} files "
                        f"(the extension says the format); got {repr(suffix) if suffix else 'no extension'}")
    return writers[suffix]


def _classification(dataset, outputs, label_names) -> list[dict]:
    examples, records = dataset.examples, []
    for i, text in enumerate(examples.texts):
        record = {"text": text}
        if examples.pairs is not None:
            record["text_pair"] = examples.pairs[i]
        if label_names == ["score"]:
            record["score"] = float(outputs["prediction"][i])
        else:
            label = int(outputs["prediction"][i])
            record.update(label=label_names[label], probability=float(np.asarray(outputs["probabilities"])[i, label]))
        records.append(record)
    return records


def _token_classification(dataset, outputs, label_names) -> list[dict]:
    return [{"words": sentence.words, "tags": tags}
            for sentence, tags in zip(dataset.sentences, dataset.word_predictions(outputs["prediction"]))]


def _question_answering(dataset, outputs, label_names) -> list[dict]:
    answers = dataset.postprocess(outputs["start_logits"], outputs["end_logits"])
    return [{"id": question, "answer": answer} for question, answer in answers.items()]


def _json_lines(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def _table(delimiter: str):
    def write(records: list[dict]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else [], delimiter=delimiter,
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    return write


def _predictions(records: list[dict]) -> str:
    """The prediction of each record (its label, score, answer or output), one a line; line breaks
    inside one become spaces, so that line i is example i's."""
    def prediction(record):
        return " ".join(str(next(record[k] for k in _PREDICTION if k in record)).splitlines())
    return "".join(prediction(record) + "\n" for record in records)


def _conll(records: list[dict]) -> str:
    return "".join("".join(f"{word}\t{tag}\n" for word, tag in zip(r["words"], r["tags"])) + "\n" for r in records)


def _squad(records: list[dict]) -> str:
    return json.dumps({r["id"]: r["answer"] for r in records}, ensure_ascii=False, indent=1) + "\n"


_PREDICTION = ("label", "score", "answer", "output")  # the field of a record that is its prediction
_RECORDS = {"classification": _classification, "token_classification": _token_classification,
            "question_answering": _question_answering}
_COMMON = {".jsonl": _json_lines, ".tsv": _table("\t"), ".csv": _table(","), ".txt": _predictions}
_OWN = {"token_classification": {".txt": _conll, ".conll": _conll}, "question_answering": {".json": _squad}}
_NOT_WRITTEN = {"token_classification": (".tsv", ".csv")}  # a sentence's words and tags are lists
