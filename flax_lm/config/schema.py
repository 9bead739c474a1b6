"""What a config key declaration means: the facts of a key (`Key`), ranges of numbers (`Range`),
and `Schema`, which `flax_lm.config.defaults` fills with one statement a key and which every
reader of those facts asks (validation, the resume check, `train.init_from`, `flax-lm config`,
the generated reference). A family block also names the model sizes the family has that 0 leaves
to be derived (`flax_lm.derived_sizes`), which `flax_lm.config.resolve` fills.

A fresh config (`Schema.config`) holds each key a model family owns as a `FamilyDefault`: a
reference that remembers whether anything (a recipe, an override, a saved config) set it, so
that `load` can give the keys nobody set their family's value.
"""

import collections.abc
import dataclasses
import importlib
from typing import Callable

import ml_collections
from ml_collections import config_dict

from flax_lm import derived_sizes


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of numbers, from `low` to `high` (None: unbounded); open ends exclude the bound."""

    low: float | None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        """As the error messages and the reference say it: "positive", ">= 0", "in (0, 1]"."""
        if self.high is None:
            if (self.low, self.low_open) == (0, True):
                return "positive"
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
UNIT_OPEN = Range(0, 1, True, True)   # (0, 1): a share that is neither none nor all
UNIT_RIGHT_OPEN = Range(0, 1, high_open=True)   # [0, 1): a dropout rate
UNIT_LEFT_OPEN = Range(0, 1, low_open=True)   # (0, 1]
UNIT = Range(0, 1)


@dataclasses.dataclass(frozen=True)
class Key:
    """What the schema knows of one key."""

    name: str   # dotted: "train.steps", or a top-level "task"
    default: object
    help: str
    choices: tuple | Callable[[], tuple] | None = None   # a callable names a table of a module that imports JAX
    range: Range | None = None
    safe_on_resume: bool = False   # a resumed run may change it (the change is reported)
    architecture: bool = False   # part of the model's shape: train.init_from takes it from the source

    @property
    def type(self) -> type:
        return type(self.default)

    def allowed(self) -> tuple | None:
        """The values the key may take, or None where any value of its type (in its range) will do."""
        return self.choices() if callable(self.choices) else self.choices


def table(module: str, name: str) -> Callable[[], tuple]:
    """The keys of the table `name` of `module`, read when needed: the module imports JAX, the schema need not."""
    return lambda: tuple(getattr(importlib.import_module(module), name))


class FamilyDefault(config_dict.FieldReference):
    """A family-owned key's value in a fresh config: the schema's default until something sets it;
    `was_set` says whether anything did (even to the same value: set is set)."""

    def __init__(self, default):
        super().__init__(default, field_type=type(default))
        self.was_set = False   # after __init__, whose own set() of the default does not count

    def set(self, value, type_safe=True):
        super().set(value, type_safe)
        self.was_set = True


class Schema(collections.abc.Mapping):
    """The keys being declared (a mapping of dotted name -> `Key`, in declaration order) and the
    family blocks; `schema(name, default, help, ...)` declares one key."""

    def __init__(self):
        self.keys: dict[str, Key] = {}
        self.families: dict[str, dict[str, object]] = {}
        self.derived: dict[str, tuple[str, ...]] = {}   # family -> its sizes that 0 leaves to be derived

    def __call__(self, name: str, default, help: str, *, choices=None, range: Range | None = None,
                 safe_on_resume: bool = False, architecture: bool = False) -> None:
        """Declares the key `name` ("section.key", or a top-level "key") with its default, help and facts."""
        self.keys[name] = Key(name, default, help, tuple(choices) if isinstance(choices, (list, tuple)) else choices,
                              range, safe_on_resume, architecture)

    def family(self, name: str, derived: tuple[str, ...] = (), **values) -> None:
        """The defaults of model family `name`: model keys (by leaf name) and their values for it, and
        `derived`, the model sizes (leaf names, keys of `flax_lm.derived_sizes.RULES`) the family has,
        whose 0 `resolve` fills by their rule; the family's model ignores the other sizes of RULES."""
        for leaf, value in values.items():
            declared = self.keys[f"model.{leaf}"]
            assert type(value) is declared.type, f"family {name}: model.{leaf} must be {declared.type.__name__}"
        unknown = set(derived) - set(derived_sizes.RULES)
        assert not unknown, f"family {name}: no rule derives {unknown}"
        self.families[name] = {f"model.{leaf}": value for leaf, value in values.items()}
        self.derived[name] = tuple(derived)

    def __getitem__(self, name: str) -> Key:
        return self.keys[name]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def config(self) -> ml_collections.ConfigDict:
        """A fresh config of every key at its default; the family-owned ones are `FamilyDefault`s."""
        owned = set(self.family_owned())
        cfg = ml_collections.ConfigDict()
        for name, k in self.keys.items():
            *sections, leaf = name.split(".")
            node = cfg
            for section in sections:
                if section not in node:
                    node[section] = ml_collections.ConfigDict()
                node = node[section]
            node[leaf] = FamilyDefault(k.default) if name in owned else k.default
        return cfg

    def key_help(self) -> dict[str, str]:
        """Each key's one-line help, by its dotted name ("train.steps"), in declaration order."""
        return {name: k.help for name, k in self.keys.items()}

    def family_defaults(self, family: str) -> dict[str, object]:
        """The values model family `family` gives the keys it owns, by dotted name ({} for none or an unknown family)."""
        return dict(self.families.get(family, {}))

    def derived_sizes(self, family: str) -> tuple[str, ...]:
        """The model sizes (leaf names) of model family `family` that 0 leaves to be derived (() for an
        unknown family)."""
        return self.derived.get(family, ())

    def family_owned(self) -> list[str]:
        """The dotted names of the keys some family gives a default of its own."""
        return list(dict.fromkeys(name for block in self.families.values() for name in block))

    def unset_family_keys(self, cfg: ml_collections.ConfigDict) -> set[str]:
        """The family-owned keys of `cfg` that nothing set since `config()` made it."""
        unset = set()
        for name in self.family_owned():
            section, leaf = name.split(".")
            field = dict(cfg[section].items(preserve_field_references=True)).get(leaf)
            if isinstance(field, FamilyDefault) and not field.was_set:
                unset.add(name)
        return unset

    def apply_family_defaults(self, cfg: ml_collections.ConfigDict) -> None:
        """Gives each family-owned key that nothing set the value of cfg's model family (else the schema's)."""
        block = self.family_defaults(cfg.model.family)
        for name in self.unset_family_keys(cfg):
            section, leaf = name.split(".")
            cfg[section][leaf] = block.get(name, self.keys[name].default)

    def architecture_keys(self) -> tuple[str, ...]:
        """The `model` keys (leaf names) that make the architecture, which `train.init_from` takes from its source."""
        return tuple(name.split(".", 1)[1] for name, k in self.keys.items() if k.architecture)

    def safe_on_resume(self, name: str) -> bool:
        """Whether a resumed run may change the key `name` (an unknown name: no)."""
        k = self.keys.get(name)
        return bool(k and k.safe_on_resume)
