"""The config as a person reads it (`flax-lm config`): every key with its value, and the keys
that match a pattern with their types, defaults and help (from `flax_lm.config.defaults`)."""

import difflib
import fnmatch

from flax_lm.config import load as config, defaults
from flax_lm.errors import UserError


def resolved(cfg) -> list[str]:
    """One `section.key = value` line a key of `cfg`; a value the recipe or an override changed
    says the default it replaced."""
    schema = defaults.get_config()
    lines = []
    for name in config.all_keys(cfg):
        value, default = cfg[name], schema[name]
        lines.append(f"{name} = {_text(value)}" + (f"  # default {_text(default)}" if value != default else ""))
    return lines


def key_table(cfg, pattern: str) -> list[str]:
    """A line for each key whose name matches `pattern`: name, type, value (and the default where
    `cfg` has another), help, with the values it may take and whether a resume may change it. A substring matches anywhere in the name; a glob (`optim.*`) the
    whole name; case is ignored. No key matching is a UserError."""
    names = matching(config.all_keys(cfg), pattern)
    schema, facts = defaults.get_config(), defaults.schema()
    rows = []
    for name in names:
        value, default, k = cfg[name], schema[name], facts[name]
        shown = _text(value) + (f" (default {_text(default)})" if value != default else "")
        allowed = f" [one of {', '.join(k.allowed())}]" if k.choices is not None else (f" [{k.range}]" if k.range
                                                                                       else "")
        rows.append((name, k.type.__name__, shown,
                     k.help + allowed + (" [safe on resume]" if k.safe_on_resume else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]


def matching(names: list[str], pattern: str) -> list[str]:
    """The `names` that `pattern` matches (see `key_table`), in their order."""
    wanted = pattern.strip().lower()
    if not wanted:
        raise UserError("--keys: give a pattern, e.g. --keys warmup or --keys 'optim.*'")
    if any(c in wanted for c in "*?["):
        found = [n for n in names if fnmatch.fnmatchcase(n.lower(), wanted)]
    else:
        found = [n for n in names if wanted in n.lower()]
    if not found:
        leaves = {}   # a misspelt word is closest to a key's own name or a word of it
        for n in reversed(names):
            leaf = n.rsplit(".", 1)[-1]
            leaves.update({word: n for word in [leaf, *leaf.split("_")]})
        close = difflib.get_close_matches(wanted, list(leaves), n=1, cutoff=0.6)
        hint = f"; did you mean {leaves[close[0]]!r}?" if close else "; `flax-lm config --keys .` lists them all"
        raise UserError(f"--keys {pattern!r}: no config key matches{hint}")
    return found


def _text(value) -> str:
    """A value as it is written after --config.key= (strings quoted, so that empty and
    space-ended ones show)."""
    return repr(value) if isinstance(value, str) else str(value)
