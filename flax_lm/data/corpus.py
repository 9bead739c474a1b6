"""Where the pre-training text comes from: one `data.source` string, read as documents.

"default" is the embedded corpus: the Python standard library's own top-level
modules, which every Python install carries, so the default job needs no download.
"tfds:NAME[/CONFIG][:SPLIT]" is a TFDS data set (`tfds_source`), "hf:NAME[:SPLIT]" a Hugging
Face `datasets` one (`hf_source`). Anything else is a
comma-separated list of files or globs: a plain-text file is one document; in a
.jsonl/.json, .csv, .tsv or .parquet file each record is one, its text in the field
`data.document_field`.

Reading may be sharded (`shard=(index, count)`): with as many files as processes or
more, each process reads only its files; otherwise each keeps every count-th record
(a TFDS or `datasets` split is split evenly). The shards are disjoint, together they are the whole
source, and each document carries its place in the whole (`Document.key`), so
shards gathered and sorted give the documents of an unsharded read, in its order.
"""

import dataclasses
import glob
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from flax_lm.data import hf_source, input_files, text_classification, tfds_source
from flax_lm.errors import UserError

DEFAULT_SOURCE = "default"
RECORD_FILES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
_KEY_STRIDE = 1 << 32  # documents of one file (or one TFDS shard) at most


@dataclasses.dataclass(frozen=True)
class Document:
    key: int    # its place in the whole source: documents sort by it into reading order
    text: str


def source_files(source: str) -> list[Path]:
    """Resolves a file `data.source` to a sorted, de-duplicated list of files."""
    if source == DEFAULT_SOURCE:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        return sorted(stdlib.glob("*.py"))
    files = []
    for pattern in (p.strip() for p in source.split(",") if p.strip()):
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [Path(m) for m in matches if Path(m).is_file()]
        if not matches:
            raise UserError(f"data.source: no file matches {pattern!r}")
        files += matches
    if not files:
        raise UserError("data.source is empty: give files or globs, or 'default' for the embedded corpus")
    return list(dict.fromkeys(files))


def read_documents(source: str, max_bytes: int = 0, **options) -> list[str]:
    """The texts of `read_shard` (by default the whole source), in reading order."""
    return [d.text for d in read_shard(source, max_bytes, **options)]


def read_shard(source: str, max_bytes: int = 0, *, document_field: str = "text", tfds_data_dir: str = "",
               tfds_download: bool = True, skip_bad_records: bool = False, hf_config: str = "",
               shard: tuple[int, int] = (0, 1)) -> list[Document]:
    """The non-empty documents of `shard` of the source, in reading order; reading stops after
    `max_bytes` characters (0: no limit). An unsharded read is the first `max_bytes` of the
    whole source; so is any set of shards each capped so, gathered, sorted and cut again."""
    kept = list(iter_shard(source, max_bytes, document_field=document_field, tfds_data_dir=tfds_data_dir,
                           tfds_download=tfds_download, skip_bad_records=skip_bad_records, hf_config=hf_config,
                           shard=shard))
    if not kept and shard[1] == 1:
        raise UserError(f"data.source: the corpus {source!r} is empty (no text in it)")
    return kept


def iter_shard(source: str, max_bytes: int = 0, *, document_field: str = "text", tfds_data_dir: str = "",
               tfds_download: bool = True, skip_bad_records: bool = False, hf_config: str = "",
               shard: tuple[int, int] = (0, 1)) -> Iterator[Document]:
    """`read_shard`'s documents one by one, each file (or TFDS record) read when reached, so a
    corpus larger than memory streams through (`flax-lm prepare`)."""
    if tfds_source.is_tfds(source) or hf_source.is_hf(source):
        split = (hf_source.HfSplit(source, hf_config) if hf_source.is_hf(source)
                 else tfds_source.TfdsSplit(source, tfds_data_dir, tfds_download))
        texts = split.records([document_field], shard)
        index, count = shard
        documents = (Document(index * _KEY_STRIDE + i, r[document_field]) for i, r in enumerate(texts))
    else:
        documents = _file_documents(source_files(source), document_field, skip_bad_records, shard)
    return _capped((d for d in documents if d.text.strip()), max_bytes)


def cap(documents: list[Document], max_bytes: int) -> list[str]:
    """The texts of `documents` sorted into reading order and cut after `max_bytes` characters in all."""
    return [d.text for d in _capped(sorted(documents, key=lambda d: d.key), max_bytes)]


def _capped(documents: Iterable[Document], max_bytes: int) -> Iterator[Document]:
    """`documents` until `max_bytes` characters in all (0: no limit), the last one cut to fit;
    reading stops there."""
    total = 0
    for document in documents:
        text = document.text[:max_bytes - total] if max_bytes else document.text
        yield Document(document.key, text)
        total += len(text)
        if max_bytes and total >= max_bytes:
            return


def _file_documents(files: list[Path], field: str, skip_bad_records: bool,
                    shard: tuple[int, int]) -> Iterator[Document]:
    index, count = shard
    by_file = len(files) >= count
    for file_index, path in enumerate(files):
        if by_file and file_index % count != index:
            continue
        for record_index, text in enumerate(_file_texts(path, field, skip_bad_records)):
            if by_file or record_index % count == index:
                yield Document(file_index * _KEY_STRIDE + record_index, text)


def _file_texts(path: Path, field: str, skip_bad_records: bool) -> list[str]:
    try:
        if path.suffix.lower() in RECORD_FILES:
            return text_classification.read_examples(path, field, label_column="", require_labels=False,
                                                     skip_bad_records=skip_bad_records).texts
        return [input_files.read_text(path)]
    except UserError as e:
        raise UserError(f"data.source: {e}") from None
