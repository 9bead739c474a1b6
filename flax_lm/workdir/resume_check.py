"""Whether a run may resume with the config it is given now.

A checkpoint means something only with the model, tokenizer, data and task it was trained
with; a resume that changed them would either fail deep inside Orbax or, worse, go on
training on other data. Keys that only steer how training continues (its length, the
learning rate, logging, checkpointing, the device layout, compute precision; declared
`safe_on_resume` in the schema) may change, and the changes are reported.
"""

import json
from pathlib import Path

from flax_lm import json_files
from flax_lm.config import defaults
from flax_lm.config import load as config_lib
from flax_lm.config.resolve import resolve
from flax_lm.workdir import layout as workdir_lib
from flax_lm.errors import UserError
from flax_lm.workdir.init_from import ARCHITECTURE_KEYS

def saved_config(workdir: Path) -> dict | None:
    """The config of the run a `train` in `workdir` would resume (None: it starts afresh)."""
    workdir = Path(workdir)
    checkpoints, config = workdir / workdir_lib.CHECKPOINTS, workdir / workdir_lib.CONFIG
    if not (config.is_file() and checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        return None
    return json_files.read_json(config)


def resolved_facts(cfg, saved: dict) -> dict:
    """The facts `flax_lm.config.resolve.resolve` fills `cfg` from when it resumes the `saved` run, as
    that run did when it started: its label count (where `cfg` leaves it to the data) and, with
    `train.init_from`, its architecture (a run saved before a key existed has the schema's default for it)."""
    facts = {}
    if cfg.model.num_labels == 0 and saved["model"]["num_labels"]:
        facts["label_count"] = saved["model"]["num_labels"]
    if cfg.train.init_from:
        facts["architecture"] = {k: saved["model"][k] for k in ARCHITECTURE_KEYS if k in saved["model"]}
    return facts


def check_config(cfg, saved: dict, workdir) -> list[str]:
    """The allowed changes of `cfg` from the `saved` config (to report); a UserError naming the
    others, if any. Both are compared resolved (`resolved_facts`): a run saved before a derived
    value was filled in its config.json (a model size or a data length at 0) reads as the value it
    derived, so it resumes, and a size stated now that differs from it is refused."""
    before = resolve(config_lib.from_json(json.dumps(with_new_keys(saved))))
    safe, refused = changes(before.to_dict(), resolve(cfg, **resolved_facts(cfg, saved)).to_dict())
    if refused:
        raise UserError(f"--workdir {workdir} holds checkpoints of another config; changed: {'; '.join(refused)}. "
                        f"Resume with the run's own settings, or start a new --workdir")
    return safe


def with_new_keys(saved: dict) -> dict:
    """`saved` with the keys added to flax_lm since it was written, at their defaults: a default
    is what a run without the key did, so an older run resumes under a newer flax_lm."""
    def fill(tree: dict, schema: dict) -> dict:
        return {**schema, **{k: fill(v, schema.get(k, {})) if isinstance(v, dict) else v for k, v in tree.items()}}
    return fill(saved, json.loads(defaults.get_config().to_json()))


def changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(safe, refused): 'key: old -> new' for every key whose value differs."""
    safe, refused = [], []
    saved, current = _flat(saved), _flat(current)
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            line = f"{key}: {old!r} -> {new!r}"
            (safe if defaults.schema().safe_on_resume(key) else refused).append(line)
    return safe, refused


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
