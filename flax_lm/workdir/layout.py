"""The layout of a run's work directory, the unit of a run."""

from pathlib import Path

from flax_lm.config import load as config_lib
from flax_lm.config import resolve
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError

CONFIG = "config.json"
TOKENIZER = tokenizer_lib.FILE
CHECKPOINTS = "checkpoints"


def local(workdir: str | Path) -> Path:
    """`workdir` as the local path every file of a run is read and written at. A URL (gs://, s3://)
    is a UserError: pathlib would make gs://bucket/run the local folder gs:/bucket/run, and each
    host of a TPU pod would keep its own checkpoints on its own disk."""
    if "://" in str(workdir):
        raise UserError(f"--workdir {workdir}: a workdir is a local path, not a URL; mount the bucket at the same "
                        f"path on every host (e.g. gcsfuse BUCKET /mnt/BUCKET) and give that path")
    return Path(workdir)


def save_config(workdir: Path, cfg) -> None:
    """Writes a run's resolved config (`flax_lm.config.resolve`), its keys in the schema's order."""
    (Path(workdir) / CONFIG).write_text(resolve.in_schema_order(cfg).to_json(indent=2) + "\n", encoding="utf-8")


def load_config(workdir: Path):
    """The config a run saved; a workdir without one is a UserError."""
    path = Path(workdir) / CONFIG
    if not path.is_file():
        raise UserError(f"--workdir {workdir}: no {CONFIG} there; is it the workdir of a `flax-lm train` run?")
    return config_lib.from_json(path.read_text(encoding="utf-8"))
