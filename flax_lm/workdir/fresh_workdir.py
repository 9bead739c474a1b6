"""A run that fails before it trains takes back what it wrote in its workdir.

The tokenizer, label map, config and logs a new run writes while it reads its data are made from
that data: left behind after a bad data file, a rerun would reuse them (a label map of the bad
file's labels, say) or find a workdir that looks like a run that never checkpointed. Only entries
the failed attempt created are removed, so nothing a user or an earlier attempt put there is lost.
"""

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def removed_on_failure(workdir: str | Path, enabled: bool = True):
    """On any exception in the block, removes the entries of `workdir` made in it (and `workdir`
    itself if the block made it), then re-raises. `enabled=False` (a process other than the
    first, which writes the workdir) leaves everything as it is."""
    workdir = Path(workdir)
    existed = workdir.is_dir()
    before = set(os.listdir(workdir)) if existed else set()
    try:
        yield
    except BaseException:
        if enabled and workdir.is_dir():
            if not existed:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for name in set(os.listdir(workdir)) - before:
                    _remove(workdir / name)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
