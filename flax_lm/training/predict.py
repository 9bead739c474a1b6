"""`flax-lm predict`: label new text with a fine-tuned run.

Each example gives one record: classification its text (and text_pair), the label and its
probability, or the score of a regression; NER its words and tags; QA the question id and answer;
seq2seq the source and the text generated for it (with the run's `sample` settings). `--output`'s
extension says how they are written: `.jsonl` one JSON object a line, `.tsv` or `.csv` a table
with a header, `.txt` the predictions alone, one a line (NER: CoNLL lines, word tab tag, a blank
line between sentences; `.conll` too); QA's `.json` is SQuAD's prediction format, {id: answer}.
Each task makes its records (`Task.predictions`) and lists its formats (`Task.output_formats`).
"""

from pathlib import Path

from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import pipeline
from flax_lm.errors import UserError
from flax_lm.training.evaluate import make_evaluator
from flax_lm.workdir.run import load_run
from flax_lm.tasks import TASKS


def predict(workdir: str | Path, input_path: str | Path, output_path: str | Path, step: int | None = None) -> int:
    """Labels the examples of `input_path` and writes them to `output_path` in the format its
    extension names; returns how many."""
    task = workdir_lib.load_config(workdir).task
    write = output_writer(task, output_path)  # a wrong extension is refused before the model loads
    run, state = load_run(workdir, step)
    run.checkpointer.close()
    dataset = pipeline.predict_dataset(run.cfg, pipeline.Prepared(run.tokenizer, {}, run.label_names),
                                       str(input_path))
    records = run.task.predictions(make_evaluator(run, run.task).inference(state.params), dataset)
    Path(output_path).write_text(write(records), encoding="utf-8")
    return len(dataset)


def output_writer(task: str, output_path: str | Path):
    """records -> the text of `output_path` for `task`, chosen by its extension; another extension
    is a UserError that lists those the task writes."""
    writers = TASKS[task].output_formats
    suffix = Path(output_path).suffix.lower()
    if suffix not in writers:
        raise UserError(f"--output {output_path}: a {task} run writes {', '.join(sorted(writers))} files "
                        f"(the extension says the format); got {repr(suffix) if suffix else 'no extension'}")
    return writers[suffix]
