"""Sentence and sentence-pair classification (or regression) data from CSV, TSV, JSON-lines or Parquet files.

A file has a header row (JSON lines: keys) naming its columns; the text column, an optional
second-text column and the label column are chosen by name. Text to label (`predict`) may also be a
`.txt` file of one text a line, or a CSV/TSV without a header whose label column shows by holding
only known labels. Labels stay strings until a
`LabelMap` built from the training split turns them into class ids (or floats for regression),
so a dev label that train never saw is caught with its file named.
"""

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import hf_source, input_files, length_buckets, tfds_source
from flax_lm.data.dataset import encoder_batch
from flax_lm.errors import UserError

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


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
                  require_labels: bool = True, skip_bad_records: bool = False, tfds_data_dir: str = "",
                  tfds_download: bool = True, known_labels: list[str] | None = None, hf_config: str = "") -> Examples:
    """Reads a `.csv`, `.tsv` (no quoting: SST-2 has unbalanced quotes), `.jsonl`/`.json` (JSON lines)
    or `.parquet` file, or a TFDS split `tfds:NAME[/CONFIG][:SPLIT]` or `datasets` split `hf:NAME[:SPLIT]`
    (`hf_config`: its config name; class ids become their names).

    With require_labels=False a file without `label_column` is accepted (labels=None), for prediction,
    and so are a `.txt` file (one text a line) and a CSV/TSV without a header: its first line is a row
    when it does not name `text_column` and exactly one more column than the texts holds nothing but
    `known_labels` (see `_headerless`).
    Any problem with the file is a UserError naming it (and the line, where there is one). A malformed
    row (wrong field count, not JSON, an empty field, bytes that are not UTF-8) is one too, unless
    `skip_bad_records`: then such rows are left out and reported in one line (`input_files.BadRecords`).
    """
    bad = input_files.BadRecords(path, skip_bad_records, "row")
    if tfds_source.is_tfds(str(path)) or hf_source.is_hf(str(path)):
        columns, rows = _read_tfds(str(path), [text_column, text_pair_column, label_column], tfds_data_dir,
                                   tfds_download, hf_config)
    elif Path(path).suffix.lower() == ".txt" and Path(path).is_file():
        columns, rows = _read_lines(Path(path), text_column, text_pair_column, require_labels, bad)
    else:
        columns, rows = _read_file(Path(path), bad)
        if not require_labels and rows and text_column not in columns and _FORMATS[Path(path).suffix.lower()] in (
                "csv", "tsv"):
            columns, rows = _headerless(Path(path), columns, rows, [text_column, text_pair_column], label_column,
                                        known_labels)
    if not rows:
        bad.report(kept=0)
        raise UserError(f"{path}: has no rows; give a file with a header and at least one example")

    has_labels = label_column in columns
    wanted = [text_column] + ([text_pair_column] if text_pair_column else [])
    wanted += [label_column] if (require_labels or has_labels) else []
    for column in wanted:
        if column not in columns:
            raise UserError(f"{path}: has no column {column!r}; its columns are {columns}")

    kept = []
    for lineno, row in rows:
        try:
            kept.append([_field(row, column) for column in wanted])
        except _BadField as e:
            bad.found(lineno, str(e))
    bad.report(kept=len(kept))
    texts = [values[0] for values in kept]
    pairs = [values[1] for values in kept] if text_pair_column else None
    labels = [values[-1].strip() for values in kept] if has_labels else None
    return Examples(path=str(path), texts=texts, pairs=pairs, labels=labels)


def _read_file(path: Path, bad: input_files.BadRecords) -> tuple[list[str], list[tuple[int, dict]]]:
    """Columns and (line number, {column: field}) rows of a data file; malformed rows go to `bad`."""
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown file type {path.suffix!r}; use .csv, .tsv, .jsonl (JSON lines) or .parquet")
    if kind == "parquet":
        return _read_parquet(path)
    text = input_files.read_text_keeping_bad_bytes(path)
    return _read_jsonl(path, text, bad) if kind == "jsonl" else _read_delimited(path, text, kind, bad)


def _read_tfds(source: str, wanted: list[str], data_dir: str, download: bool,
               hf_config: str = "") -> tuple[list[str], list[tuple[int, dict]]]:
    """The fields of a TFDS (or, `hf:`, `datasets`) split and (record number, {field: value}) rows
    holding those of `wanted` it has, class ids as class names."""
    split = (hf_source.HfSplit(source, hf_config) if hf_source.is_hf(source)
             else tfds_source.TfdsSplit(source, data_dir, download))
    fields = split.fields()
    columns = [c for c in wanted if c in fields]
    rows = []
    for i, record in enumerate(split.records(columns), 1):
        for column in columns:
            names = fields[column]
            if names is not None and 0 <= record[column] < len(names):
                record[column] = names[record[column]]
        rows.append((i, record))
    return list(fields), rows


def _read_lines(path: Path, text_column: str, text_pair_column: str, require_labels: bool,
                bad: input_files.BadRecords) -> tuple[list[str], list[tuple[int, dict]]]:
    """A `.txt` file of texts to label, one a line, as rows of `text_column`."""
    if require_labels:
        raise UserError(f"{path}: a .txt file holds texts alone (one a line); data to train or score on is a table "
                        f"(.csv, .tsv, .jsonl, .parquet) with a label column")
    if text_pair_column:
        raise UserError(f"{path}: this run classifies pairs of texts; give a table (.csv, .tsv, .jsonl, .parquet) "
                        f"with columns {text_column!r} and {text_pair_column!r}")
    rows = []
    for lineno, line in input_files.lines(input_files.read_text_keeping_bad_bytes(path)):
        problem = input_files.not_utf8(line)
        if problem:
            bad.found(lineno, problem)
        else:
            rows.append((lineno, {text_column: line.rstrip("\n")}))
    return [text_column], rows


def _headerless(path: Path, first: list[str], rows: list[tuple[int, dict]], text_columns: list[str],
                label_column: str, known_labels: list[str] | None) -> tuple[list[str], list[tuple[int, dict]]]:
    """The rows of a CSV/TSV read with its first line as the header, read again as a file without one
    (the first line a row too) when that is unambiguous: one column more than the texts, which holds
    only `known_labels` on every line, the first included (a header names it, e.g. "label"); the
    other columns are the texts in order. Anything else is a UserError saying what the file needs."""
    texts = [c for c in text_columns if c]
    lines = [(1, dict(zip(first, first)))] + rows
    values = {column: {row[column].strip() for _, row in lines} for column in first}
    label_like = [column for column in first if known_labels and values[column] <= set(known_labels)]
    if len(first) != len(texts) + 1 or len(label_like) != 1:
        named = ", ".join(map(repr, texts))
        raise UserError(f"{path}: its first line {first} does not name the column {texts[0]!r}; give a header line "
                        f"naming {named} (and {label_column!r} if it has labels)"
                        + ("" if len(texts) > 1 else ", or a .txt file of one text a line"))
    order = [column for column in first if column != label_like[0]]
    names = {column: name for column, name in zip(order, texts)} | {label_like[0]: label_column}
    return [names[c] for c in first], [(lineno, {names[c]: v for c, v in row.items()}) for lineno, row in lines]


class _BadField(Exception):
    """A row's field that cannot be used; the reader refuses or skips the row."""


def _field(row: dict, column: str) -> str:
    """The text of `column` in `row` (JSON values other than strings as JSON)."""
    value = row.get(column)
    if value is None:
        raise _BadField(f"the row has no {column!r} field")
    value = value if isinstance(value, str) else json.dumps(value)
    if not value.strip():
        raise _BadField(f"{column!r} is empty; remove the row or fill it in")
    return value


def _read_delimited(path: Path, text: str, kind: str,
                    bad: input_files.BadRecords) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, {column: field}) rows of a CSV or TSV file; blank lines are skipped,
    malformed rows go to `bad`."""
    lines = io.StringIO(text, newline="")
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise UserError(f"{path}:1: malformed {kind.upper()} header ({e})") from None
    if header is None:
        return [], []
    _check_header(path, header, reader.line_num)
    rows = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:   # the reader goes on at the next line
            bad.found(reader.line_num, f"malformed {kind.upper()} ({e})")
            continue
        if not fields:
            continue
        problem = input_files.not_utf8("".join(fields))
        if len(fields) != len(header):
            problem = (f"the row has {len(fields)} fields, the header has {len(header)} ({header}); "
                       f"fix the row or the delimiter")
        if problem:
            bad.found(reader.line_num, problem)
        else:
            rows.append((reader.line_num, dict(zip(header, fields))))
    return header, rows


def _check_header(path: Path, header: list[str], line: int) -> None:
    if not header:
        raise UserError(f"{path}:{line}: the first line is empty; it must name the columns")
    problem = input_files.not_utf8("".join(header))
    if problem:
        raise UserError(f"{path}:{line}: the header {problem}")
    repeated = [name for i, name in enumerate(header) if name in header[:i]]
    if repeated:
        raise UserError(f"{path}:{line}: the header names the column {repeated[0]!r} twice; rename one")


def _read_jsonl(path: Path, text: str, bad: input_files.BadRecords) -> tuple[list[str], list[tuple[int, dict]]]:
    """Keys of the first object and (line number, object) rows of a JSON-lines file; malformed lines go to `bad`."""
    rows, first = [], True
    for lineno, line in input_files.lines(text):
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):
            raise UserError(f"{path}: is a JSON array; write one JSON object per line (JSON lines)")
        first = False
        problem = input_files.not_utf8(line)
        if not problem:
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    problem = f"expected a JSON object, got {type(row).__name__}"
            except json.JSONDecodeError as e:
                problem = f"not valid JSON ({e.msg}); expected one JSON object per line"
            except RecursionError:
                problem = "JSON nested too deeply to read"
            except ValueError:   # Python refuses integers of more than 4300 digits
                problem = "a JSON number has too many digits"
        if problem:
            bad.found(lineno, problem)
        else:
            rows.append((lineno, row))
    return (list(rows[0][1]) if rows else []), rows


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Columns and (row number from 1, {column: value}) rows of a Parquet file."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install 'flax_lm[parquet]'") from None
    try:
        table = pyarrow.parquet.read_table(path)
    except (OSError, pyarrow.ArrowException) as e:
        raise UserError(f"{path}: is not a readable Parquet file ({e})") from None
    return table.column_names, list(enumerate(table.to_pylist(), 1))


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
        text = input_files.read_text(path)
        try:
            data = json.loads(text)
            names, regression = data["names"], data["regression"]
        except (ValueError, RecursionError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a label map (JSON with 'names' and 'regression'): "
                            f"{type(e).__name__} {e}") from None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(regression, bool)):
            raise UserError(f"{path}: 'names' must be a list of strings and 'regression' true or false")
        if not names or len(set(names)) < len(names):
            raise UserError(f"{path}: 'names' must list each label once; it is {names}")
        return cls(names=names, regression=regression)


def _parse_floats(raw_labels: list[str], path: str) -> np.ndarray:
    try:
        values = [float(label) for label in raw_labels]
    except ValueError as e:
        raise UserError(f"{path}: a regression label is not a number ({e})") from None
    # float() reads "nan" and "inf", and float32 turns 1e39 into inf: either would poison the loss.
    with np.errstate(over="ignore"):
        scores = np.asarray(values, np.float32)
    if not np.isfinite(scores).all():
        label = raw_labels[int(np.flatnonzero(~np.isfinite(scores))[0])]
        raise UserError(f"{path}: regression label {label!r} is not a finite float32 number")
    return scores


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
