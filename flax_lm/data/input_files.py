"""Data files as users give them: UTF-8 text with or without a byte-order mark, bytes that are not
UTF-8 reported at their line, and malformed records refused or, with `data.skip_bad_records`,
skipped, counted and reported in one line per file."""

import codecs
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from flax_lm.errors import UserError

# errors="surrogateescape" turns each byte that is not UTF-8 into one of these; decoded UTF-8 never has them.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_LINE_BREAK = re.compile("\r\n|\r|\n")


def read_text(path: Path) -> str:
    """The whole text of `path`, without a leading BOM; a byte that is not UTF-8 is a UserError naming its line."""
    text = read_text_keeping_bad_bytes(path)
    problem = not_utf8(text)
    if problem:
        before = text[:_ESCAPED_BYTE.search(text).start()]
        raise UserError(f"{path}:{len(_LINE_BREAK.findall(before)) + 1}: {problem}")
    return text


def read_text_keeping_bad_bytes(path: Path) -> str:
    """Like `read_text`, but bytes that are not UTF-8 stay in the text as markers that `not_utf8` finds,
    so that a reader can refuse or skip just the record that holds one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    if raw.startswith(codecs.BOM_UTF8):   # Excel and Notepad write one; it is not part of the first field
        raw = raw[len(codecs.BOM_UTF8):]
    return raw.decode("utf-8", errors="surrogateescape")


def not_utf8(text: str) -> str:
    """What is wrong with `text` (from `read_text_keeping_bad_bytes`) if it holds a byte that is not UTF-8, else ""."""
    found = _ESCAPED_BYTE.search(text)
    if found is None:
        return ""
    return f"is not UTF-8 text (byte 0x{ord(found.group()) - 0xDC00:02x}); save the file as UTF-8"


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) under universal newlines (\\n, \\r\\n or \\r), as a file opened in text mode."""
    return enumerate(io.StringIO(text, newline=None), 1)


class BadRecords:
    """The malformed records (rows, sentences) of one file.

    Without `skip` the first one is a UserError "{path}:{line}: {problem}"; with it, records are
    counted and `report` prints one line about them, or fails when no record was left.
    """

    def __init__(self, path: Path, skip: bool, unit: str):
        self.path, self.skip, self.unit = path, skip, unit
        self.count = 0
        self.first: tuple[int, str] | None = None   # (line, problem) of the earliest bad record

    def found(self, line: int, problem: str) -> None:
        """The record at `line` is malformed: raises, or (skipping) counts it."""
        if not self.skip:
            raise UserError(f"{self.path}:{line}: {problem}")
        self.count += 1
        if self.first is None or line < self.first[0]:
            self.first = (line, problem)

    def report(self, kept: int) -> None:
        """Prints how many records were skipped (nothing when none); a UserError when `kept` is 0."""
        if not self.count:
            return
        line, problem = self.first
        units = self.unit + ("s" if self.count > 1 else "")
        what = f"{self.count} malformed {units} (the first at line {line}: {problem})"
        if not kept:
            raise UserError(f"{self.path}: no {self.unit}s left after skipping {what}")
        print(f"{self.path}: skipped {what}; data.skip_bad_records is set", file=sys.stderr, flush=True)
