"""How `flax-lm predict` writes a task's records (one dict per example), by the output file's
extension: `.jsonl` one JSON object a line, `.tsv` / `.csv` a table with a header, `.txt` the
predictions alone, one a line; NER's CoNLL lines and QA's SQuAD prediction file are their tasks' own."""

import csv
import io
import json

PREDICTION = ("label", "score", "answer", "output")  # the field of a record that is its prediction


def json_lines(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def table(delimiter: str):
    """records -> a table with a header row, its columns the first record's fields."""
    def write(records: list[dict]) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else [], delimiter=delimiter,
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    return write


def predictions(records: list[dict]) -> str:
    """The prediction of each record (its label, score, answer or output), one a line; line breaks
    inside one become spaces, so that line i is example i's."""
    def prediction(record):
        return " ".join(str(next(record[k] for k in PREDICTION if k in record)).splitlines())
    return "".join(prediction(record) + "\n" for record in records)


def conll(records: list[dict]) -> str:
    """Records of `words` and `tags` as CoNLL lines: word tab tag, a blank line after each sentence."""
    return "".join("".join(f"{word}\t{tag}\n" for word, tag in zip(r["words"], r["tags"])) + "\n" for r in records)


def squad(records: list[dict]) -> str:
    """Records of `id` and `answer` as SQuAD's prediction file, {id: answer}."""
    return json.dumps({r["id"]: r["answer"] for r in records}, ensure_ascii=False, indent=1) + "\n"


COMMON = {".jsonl": json_lines, ".tsv": table("\t"), ".csv": table(","), ".txt": predictions}
