"""The layout of a run's work directory, the unit of a run."""

from pathlib import Path

from flax_lm import config as config_lib
from flax_lm.errors import UserError

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"


def save_config(workdir: Path, cfg) -> None:
    (Path(workdir) / CONFIG).write_text(cfg.to_json(indent=2) + "\n", encoding="utf-8")


def load_config(workdir: Path):
    """The config a run saved; a workdir without one is a UserError."""
    path = Path(workdir) / CONFIG
    if not path.is_file():
        raise UserError(f"--workdir {workdir}: no {CONFIG} there; is it the workdir of a `flax-lm train` run?")
    return config_lib.from_json(path.read_text(encoding="utf-8"))
