"""JSON files a run writes and reads back: written whole and renamed into place, read with one
line for a missing or damaged file. Below every layer, since data, tasks and the workdir all keep some."""

import json
import os
from pathlib import Path

from flax_lm.errors import UserError


def write_json(path: Path, value) -> None:
    """Writes `value` whole, then renames it into place: a reader (another process, a run that
    was killed mid-write) sees the old file or the new one, never half of one."""
    partial = Path(path).with_name(f"{Path(path).name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_json(path: Path):
    """A JSON file the run wrote; a missing or damaged one is a UserError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:200]})") from None
