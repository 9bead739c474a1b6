"""Text-to-text pairs (translation, summarization) for an encoder-decoder: read, encoded once, batched.

A split is a table (.tsv, .csv, .jsonl, .parquet, or a TFDS split) with a source and a target
column, or a prefix P of parallel text files P.SOURCE_FIELD and P.TARGET_FIELD, one sentence a
line (multi30k/train.en and multi30k/train.de). Both sides end with the end token, as T5's
tokenizer encodes them; the decoder starts from the pad id (T5's decoder start token).
"""

import dataclasses
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import hf_source, input_files, length_buckets, tfds_source, unigram
from flax_lm.data.text_classification import _FORMATS, _BadField, _field, _read_file, _read_tfds
from flax_lm.errors import UserError

BATCH_KEYS = ("inputs", "input_mask", "decoder_inputs", "targets", "weights")


@dataclasses.dataclass
class Pairs:
    """One split's raw text. `targets` is None for a source-only input (prediction). `lines[i]` is
    where pair i is in its file (the record number of a TFDS split); `source_file` and
    `target_file` name the files that hold each side (both `path` for a table)."""

    path: str
    sources: list[str]
    targets: list[str] | None
    lines: list[int] = dataclasses.field(default_factory=list)
    source_file: str = ""
    target_file: str = ""

    def __len__(self) -> int:
        return len(self.sources)


def read_pairs(path: str | Path, source_field: str, target_field: str, *, require_targets: bool = True,
               skip_bad_records: bool = False, tfds_data_dir: str = "", tfds_download: bool = True,
               hf_config: str = "") -> Pairs:
    """The pairs of `path`: a table, TFDS split (`tfds:NAME[/CONFIG][:SPLIT]`) or `datasets` split
    (`hf:NAME[:SPLIT]`, config `hf_config`) with columns
    `source_field` and `target_field`, else parallel files `{path}.{source_field}` and
    `{path}.{target_field}`.

    With require_targets=False (prediction) a table without the target column, a prefix with only
    the source file, or a plain text file of sources (one a line) is accepted too (targets None;
    targets present are still read). Any problem is a UserError naming the file (and line); a
    malformed or empty record is one too unless `skip_bad_records` (then it is counted and left out).
    """
    path = str(path)
    source_file, target_file = Path(f"{path}.{source_field}"), Path(f"{path}.{target_field}")
    if tfds_source.is_tfds(path) or hf_source.is_hf(path) or (Path(path).is_file()
                                                              and Path(path).suffix.lower() in _FORMATS):
        return _read_table(path, source_field, target_field, require_targets, skip_bad_records, tfds_data_dir,
                           tfds_download, hf_config)
    if source_file.is_file() and target_file.is_file():
        return _read_parallel(path, source_file, target_file, skip_bad_records)
    if not require_targets and source_file.is_file():
        return _read_parallel(path, source_file, None, skip_bad_records)
    if not require_targets and Path(path).is_file():
        return _read_parallel(path, Path(path), None, skip_bad_records)
    if Path(path).is_file():
        raise UserError(f"{path}: is not a table ({', '.join(_FORMATS)}); for parallel text files give their "
                        f"common prefix P of P.{source_field} and P.{target_field}")
    found = [str(f) for f in (source_file, target_file) if f.is_file()]
    also = f" (found only {found[0]})" if found else ""
    raise UserError(f"{path}: no such data file, nor the parallel text files {source_file} and {target_file}{also}; "
                    f"give a table ({', '.join(_FORMATS)}), a tfds: split or the prefix of two parallel files")


def _read_table(path: str, source_field: str, target_field: str, require_targets: bool, skip_bad_records: bool,
                tfds_data_dir: str, tfds_download: bool, hf_config: str = "") -> Pairs:
    """The pairs of a table file, TFDS or `datasets` split (columns read by text_classification's readers)."""
    bad = input_files.BadRecords(path, skip_bad_records, "row")
    if tfds_source.is_tfds(path) or hf_source.is_hf(path):
        columns, rows = _read_tfds(path, [source_field, target_field], tfds_data_dir, tfds_download, hf_config)
    else:
        columns, rows = _read_file(Path(path), bad)
    if not rows:
        bad.report(kept=0)
        raise UserError(f"{path}: has no rows; give a file with a header and at least one pair")
    with_targets = require_targets or target_field in columns
    wanted = [source_field] + ([target_field] if with_targets else [])
    for column in wanted:
        if column not in columns:
            raise UserError(f"{path}: has no column {column!r} (data.source_field / data.target_field); "
                            f"its columns are {columns}")
    kept, lines = [], []
    for lineno, row in rows:
        try:
            kept.append([_field(row, column) for column in wanted])
            lines.append(lineno)
        except _BadField as e:
            bad.found(lineno, str(e))
    bad.report(kept=len(kept))
    targets = [values[1] for values in kept] if with_targets else None
    return Pairs(path, [values[0] for values in kept], targets, lines, path, path)


def _text_lines(path: Path) -> list[str]:
    """The lines of a text file, bytes that are not UTF-8 kept for `_checked`; blank lines at its end dropped."""
    lines = [line.rstrip("\n") for _, line in input_files.lines(input_files.read_text_keeping_bad_bytes(path))]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _checked(lines: list[str], bad: input_files.BadRecords) -> list[str | None]:
    """`lines` with each that is not UTF-8 or is empty reported to `bad` (which raises unless skipping) and None."""
    checked = []
    for lineno, line in enumerate(lines, 1):
        problem = input_files.not_utf8(line) or ("" if line.strip() else "the line is empty; every line holds "
                                                 "a sentence (the files are aligned line by line)")
        if problem:
            bad.found(lineno, problem)
        checked.append(None if problem else line)
    return checked


def _read_parallel(path: str, source_file: Path, target_file: Path | None, skip_bad_records: bool) -> Pairs:
    """The pairs of aligned text files (sources only when `target_file` is None)."""
    sources = _text_lines(source_file)
    targets = _text_lines(target_file) if target_file is not None else None
    if targets is not None and len(sources) != len(targets):
        raise UserError(f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}; "
                        f"parallel files hold one sentence a line, aligned")
    bads = [input_files.BadRecords(f, skip_bad_records, "line") for f in (source_file, target_file)]
    sources = _checked(sources, bads[0])
    targets = _checked(targets, bads[1]) if targets is not None else None
    keep = [i for i, s in enumerate(sources) if s is not None and (targets is None or targets[i] is not None)]
    for bad in bads:
        bad.report(kept=len(keep))
    if not keep:
        raise UserError(f"{source_file}: has no lines; give at least one sentence")
    return Pairs(path, [sources[i] for i in keep], [targets[i] for i in keep] if targets is not None else None,
                 [i + 1 for i in keep], str(source_file), str(target_file or ""))


def _encode(texts: list[str] | None, count: int, tokenizer: Tokenizer, max_len: int, pad: int,
            eos: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """`texts` encoded with the end token last and cut to `max_len` (keeping it last): ids_NxL int32
    padded with `pad`, lengths_N, and (index, length before the cut) of each text that was too long.
    None (a split without targets) is `count` empty rows."""
    ids_NxL, lengths_N, over = np.full((count, max_len), pad, np.int32), np.zeros(count, np.int64), []
    for i, encoding in enumerate(tokenizer.encode_batch(texts) if texts is not None else []):
        ids = encoding.ids
        if not ids or ids[-1] != eos:   # a tokenizer whose post-processor does not append it
            ids = [*ids, eos]
        if len(ids) > max_len:
            over.append((i, len(ids)))
            ids = [*ids[:max_len - 1], eos]
        ids_NxL[i, :len(ids)] = ids
        lengths_N[i] = len(ids)
    return ids_NxL, lengths_N, over


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that neither pads nor truncates (a loaded tokenizer.json may do either)."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


class Seq2SeqDataset:
    """Pairs encoded once, `prefix` + source for the encoder and the target for the decoder.

    batch() returns, with B = len(indices), T = source_len and S = target_len (end token included):
      inputs, input_mask (B, T) int32: the source ids then pad; 1 on real tokens.
      decoder_inputs (B, S) int32: pad (T5's decoder start), then the targets shifted right.
      targets (B, S) int32: the target ids, eos, then pad (all pad for a source-only split).
      weights (B, S) float32: 1 on real target tokens (eos included), 0 on padding.
    A sequence longer than its width is cut to it, keeping the end token last, and counted in one
    warning line for the split; with too_long="refuse" it is a UserError naming its line. With
    `dynamic_padding`, `padding` lets the loop cut batches to their longest pair (`length_buckets`).
    """

    def __init__(self, pairs: Pairs, tokenizer: Tokenizer, source_len: int, target_len: int, *, prefix: str = "",
                 too_long: str = "truncate", dynamic_padding: bool = True, warn=print):
        if too_long not in ("truncate", "refuse"):
            raise UserError(f"data.too_long must be 'truncate' or 'refuse', not {too_long!r}")
        self.pad, self.eos, _ = unigram.special_ids(tokenizer)
        self.source_len, self.target_len = source_len, target_len
        self.sources, self.references = pairs.sources, pairs.targets
        plain = _plain_copy(tokenizer)
        self.source_ids_NxT, self.source_lengths, sources_over = _encode(
            [prefix + s for s in pairs.sources], len(pairs), plain, source_len, self.pad, self.eos)
        self.target_ids_NxS, self.target_lengths, targets_over = _encode(
            pairs.targets, len(pairs), plain, target_len, self.pad, self.eos)
        _check_lengths(pairs, sources_over, targets_over, source_len, target_len, too_long, warn)
        self.padding = None
        if dynamic_padding:
            self.padding = length_buckets.DynamicPadding(
                np.maximum(self.source_lengths, self.target_lengths), BATCH_KEYS,
                length_buckets.bucket_lengths(max(source_len, target_len)))

    def __len__(self) -> int:
        return len(self.source_ids_NxT)

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """The pairs `indices` (B,); keys and shapes in the class docstring (`epoch` is not used)."""
        indices = np.asarray(indices, np.int64)
        targets_BxS = self.target_ids_NxS[indices]
        decoder_inputs_BxS = np.full_like(targets_BxS, self.pad)
        decoder_inputs_BxS[:, 1:] = targets_BxS[:, :-1]
        return {
            "inputs": self.source_ids_NxT[indices],
            "input_mask": (np.arange(self.source_len) < self.source_lengths[indices, None]).astype(np.int32),
            "decoder_inputs": decoder_inputs_BxS,
            "targets": targets_BxS,
            "weights": (np.arange(self.target_len) < self.target_lengths[indices, None]).astype(np.float32),
        }

    def source_ids(self, indices: np.ndarray) -> list[list[int]]:
        """The encoder ids of the pairs `indices` (prefix and end token included, no padding), for generation."""
        return [self.source_ids_NxT[i, :self.source_lengths[i]].tolist() for i in np.asarray(indices, np.int64)]


def _check_lengths(pairs: Pairs, sources_over: list[tuple[int, int]], targets_over: list[tuple[int, int]],
                   source_len: int, target_len: int, too_long: str, warn) -> None:
    """Refuses the first sequence over its length (too_long="refuse"), or warns once about them all."""
    sides = [("source", pairs.source_file, sources_over, source_len, "data.seq_len"),
             ("target", pairs.target_file, targets_over, target_len, "data.target_len")]
    if too_long == "refuse":
        for side, file, over, max_len, key in sides:
            if over:
                i, length = over[0]
                where = f"{file}:{pairs.lines[i]}" if pairs.lines else f"{file}: pair {i + 1}"
                raise UserError(f"{where}: the {side} has {length} tokens, more than {max_len} ({key}); raise {key} "
                                f"or set data.too_long=truncate")
        return
    counts = [f"{len(over)} of {len(pairs)} {side}s truncated to {max_len} tokens ({key})"
              for side, _, over, max_len, key in sides if over]
    if counts:
        warn(f"{pairs.path}: {', '.join(counts)}; raise the lengths or set data.too_long=refuse to find them")
