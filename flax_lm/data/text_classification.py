"""Sentence and sentence-pair classification (or regression) data from CSV, TSV or JSON-lines files.

A file has a header row (JSON lines: keys) naming its columns; the text column, an optional
second-text column and the label column are chosen by name. Labels stay strings until a
`LabelMap` built from the training split turns them into class ids (or floats for regression),
so a dev label that train never saw is caught with its file named.
"""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import length_buckets
from flax_lm.data.dataset import encoder_batch
from flax_lm.errors import UserError

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclasses.dataclass
class Examples:
    """One split's raw rows. `pairs` is None for single-text tasks; `labels` is None when the file has none."""

    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.texts)


def read_examples(path: str | Path, text_column: str, text_pair_column: str = "", label_column: str = "label",
                  require_labels: bool = True) -> Examples:
    """Reads a `.csv`, `.tsv` (no quoting: SST-2 has unbalanced quotes) or `.jsonl`/`.json` (JSON lines) file.

    With require_labels=False a file without `label_column` is accepted (labels=None), for prediction.
    Any problem with the file is a UserError naming it (and the line, where there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown file type {path.suffix!r}; use .csv, .tsv or .jsonl (JSON lines)")
    try:
        columns, rows = _read_jsonl(path) if kind == "jsonl" else _read_delimited(path, kind)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise UserError(f"{path}: has no rows; give a file with a header and at least one example")

    has_labels = label_column in columns
    wanted = [text_column] + ([text_pair_column] if text_pair_column else [])
    wanted += [label_column] if (require_labels or has_labels) else []
    for column in wanted:
        if column not in columns:
            raise UserError(f"{path}: has no column {column!r}; its columns are {columns}")

    def field(lineno: int, row: dict, column: str) -> str:
        value = row.get(column)
        if value is None:
            raise UserError(f"{path}:{lineno}: the row has no {column!r} field")
        value = value if isinstance(value, str) else json.dumps(value)
        if not value.strip():
            raise UserError(f"{path}:{lineno}: {column!r} is empty; remove the row or fill it in")
        return value

    texts = [field(lineno, row, text_column) for lineno, row in rows]
    pairs = [field(lineno, row, text_pair_column) for lineno, row in rows] if text_pair_column else None
    labels = [field(lineno, row, label_column).strip() for lineno, row in rows] if has_labels else None
    return Examples(path=str(path), texts=texts, pairs=pairs, labels=labels)


def _read_delimited(path: Path, kind: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, {column: field}) rows of a CSV or TSV file; blank lines are skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return [], []
            rows = []
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise UserError(
                        f"{path}:{reader.line_num}: the row has {len(fields)} fields, the header has {len(header)} "
                        f"({header}); fix the row or the delimiter")
                rows.append((reader.line_num, dict(zip(header, fields))))
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: malformed {kind.upper()} ({e})") from None
    return header, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Keys of the first object and (line number, object) rows of a JSON-lines file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not rows and line.lstrip().startswith("["):
                raise UserError(f"{path}: is a JSON array; write one JSON object per line (JSON lines)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line") \
                    from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return (list(rows[0][1]) if rows else []), rows


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Class names in id order (ids are positions), or the single output "score" of a regression task."""

    names: list[str]
    regression: bool = False

    @classmethod
    def from_labels(cls, raw_labels: list[str], regression: bool, path: str = "the training data") -> "LabelMap":
        """The classes seen in `raw_labels`, sorted (numerically when every label is an integer).

        For regression the labels must parse as floats and the map is just ["score"].
        """
        if regression:
            _parse_floats(raw_labels, path)
            return cls(names=["score"], regression=True)
        unique = set(raw_labels)
        if len(unique) < 2:
            raise UserError(
                f"{path}: has {len(unique)} distinct label(s) {sorted(unique)}; classification needs at least two "
                f"(or set the task to regression)")
        names = sorted(unique, key=int) if all(map(_is_int, unique)) else sorted(unique)
        return cls(names=names, regression=False)

    @property
    def num_labels(self) -> int:
        """Width of the model's output: number of classes, 1 for regression."""
        return len(self.names)

    def encode(self, raw_labels: list[str], path: str) -> np.ndarray:
        """(N,) int32 class ids, or (N,) float32 scores for regression; `path` names the file in errors."""
        if self.regression:
            return _parse_floats(raw_labels, path)
        ids = {name: i for i, name in enumerate(self.names)}
        unknown = sorted(set(raw_labels) - ids.keys())
        if unknown:
            raise UserError(
                f"{path}: label {unknown[0]!r} is not one of the training labels {self.names}; "
                f"fix the file or train with data that has it")
        return np.asarray([ids[label] for label in raw_labels], np.int32)

    def save(self, path: str | Path) -> None:
        """Writes {"names": [...], "regression": bool} as JSON."""
        Path(path).write_text(json.dumps({"names": self.names, "regression": self.regression}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        """Reads a file written by `save`; a missing or malformed file is a UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"label map {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
            names, regression = data["names"], data["regression"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a label map (JSON with 'names' and 'regression'): {e}") from None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(regression, bool)):
            raise UserError(f"{path}: 'names' must be a list of strings and 'regression' true or false")
        return cls(names=names, regression=regression)


def _parse_floats(raw_labels: list[str], path: str) -> np.ndarray:
    try:
        return np.asarray([float(label) for label in raw_labels], np.float32)
    except ValueError as e:
        raise UserError(f"{path}: a regression label is not a number ({e})") from None


def _truncating_padding_copy(tokenizer: Tokenizer, max_len: int, pad_id: int) -> Tokenizer:
    """A copy of `tokenizer` that truncates (longest first) and pads to max_len; the caller's is left as it was."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.enable_truncation(max_length=max_len, strategy="longest_first")
    copy.enable_padding(length=max_len, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
    return copy


class ClassificationDataset:
    """Examples encoded once as `[CLS] A [SEP] (B [SEP])` (whatever the tokenizer's post-processor adds).

    batch(): input_ids, token_type_ids, attention_mask (B, T) int32; labels (B,) int32 class ids, or float32
    for regression, zeros when the examples have no labels; weights (B,) float32 ones. With
    `dynamic_padding`, `padding` lets the loop cut batches to their longest example (`length_buckets`).
    """

    def __init__(self, examples: Examples, tokenizer: Tokenizer, max_len: int, pad_id: int,
                 label_map: LabelMap | None, dynamic_padding: bool = False):
        self.examples = examples
        encoder = _truncating_padding_copy(tokenizer, max_len, pad_id)
        inputs = list(zip(examples.texts, examples.pairs)) if examples.pairs is not None else examples.texts
        encodings = encoder.encode_batch(inputs)
        self.input_ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(examples), max_len)
        self.token_type_ids = np.asarray([e.type_ids for e in encodings], np.int8).reshape(len(examples), max_len)
        self.attention_mask = np.asarray([e.attention_mask for e in encodings], np.int8).reshape(len(examples), max_len)
        regression = label_map is not None and label_map.regression
        if examples.labels is None:
            self.labels = np.zeros(len(examples), np.float32 if regression else np.int32)
        elif label_map is None:
            raise ValueError("labelled examples need a label_map")
        else:
            self.labels = label_map.encode(examples.labels, examples.path)
        self.padding = length_buckets.make(self.attention_mask, (), dynamic_padding)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """The examples at `indices` (B,); every array leads with B."""
        return encoder_batch(self, indices, labels=self.labels)
