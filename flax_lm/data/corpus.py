"""Where the training text comes from.

"default" is the embedded corpus: the Python standard library's own top-level
modules, which every Python install carries, so the default job needs no download.
Anything else is a comma-separated list of files or globs of UTF-8 text.
"""

import glob
import sysconfig
from pathlib import Path

from flax_lm.data import input_files
from flax_lm.errors import UserError

DEFAULT_SOURCE = "default"


def source_files(source: str) -> list[Path]:
    """Resolves `data.source` to a sorted, de-duplicated list of files."""
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


def read_documents(source: str, max_bytes: int = 0) -> list[str]:
    """Reads each file as one document, in order; stops after `max_bytes` (0: no limit)."""
    documents, total = [], 0
    for path in source_files(source):
        try:
            text = input_files.read_text(path)
        except UserError as e:
            raise UserError(f"data.source: {e}") from None
        if max_bytes and total + len(text) > max_bytes:
            text = text[: max_bytes - total]
        if text.strip():
            documents.append(text)
            total += len(text)
        if max_bytes and total >= max_bytes:
            break
    if not documents:
        raise UserError(f"data.source: the corpus {source!r} is empty (no text in its files)")
    return documents
