"""A run's config resolved: every value the schema leaves to be derived, filled once, then locked.

Some keys mean "derived" at 0: the model sizes of `flax_lm.derived_sizes` (`model.d_ff`: 4 * d_model,
`model.head_dim`: d_model // n_heads, `model.n_kv_heads`: n_heads, `model.n_decoder_layers`: n_layers;
each family's defaults block in `flax_lm.config.defaults` names the ones its model has) and the data
lengths (`data.seq_len`: model.max_len, `data.target_len`: data.seq_len, `data.max_predictions`); a run
from `train.init_from` takes the source's architecture; a classification run takes its label count from
its data. `resolve` fills all of them in one place, from the facts its caller gathered, and returns a
`FrozenConfigDict`: what a run builds from (`train` and `compile` alike) and saves in its workdir, so its
config.json holds the real sizes, and what no later code can change. A size a family does not name stays
as given: the family's model does not read it (GPT-2 has no `head_dim` of its own to state).

The label count is the one fact that comes after: the data are read with the resolved shape
(`data.seq_len`, the source's architecture), and only then are the labels known, so `with_label_count`
sets `model.num_labels` on a resolved config; no derived value reads it.

The keys that depend on the devices (`parallel.data=-1`, `peak_flops_per_device=0`) and `train.steps=0`
(counted from `train.epochs` and the data) are not config values to fill: the mesh and the run's step
count hold them.
"""

import math

import ml_collections

from flax_lm import derived_sizes
from flax_lm.config import defaults
from flax_lm.config import load as config_lib
from flax_lm.errors import UserError


def _derived(cfg) -> dict[str, object]:
    """What each "0 means derived" key of `cfg` (an unlocked config, its architecture final) stands
    for, by dotted name, in an order where a value is derived after those it reads."""
    sizes = derived_sizes.filled(cfg.model, defaults.schema().derived_sizes(cfg.model.family))
    d = cfg.data
    seq_len = d.seq_len or cfg.model.max_len
    return {
        **{f"model.{name}": value for name, value in sizes.items()},
        "data.seq_len": seq_len,
        "data.target_len": d.target_len or seq_len,
        "data.max_predictions": d.max_predictions or math.ceil(d.mask_prob * seq_len),
    }


# the keys `resolve` fills when they are 0: the data lengths, and the model sizes of every family
DERIVED = tuple(sorted({f"model.{name}" for name in derived_sizes.RULES} | set(_derived(defaults.get_config()))))


def resolve(cfg, *, architecture: dict | None = None, label_count: int | None = None
            ) -> ml_collections.FrozenConfigDict:
    """`cfg` (a validated config, left as it is) resolved and locked: the `model` values of
    `architecture` (those of train.init_from's source, by leaf name) over its own, every key of
    `DERIVED` that is 0 and that its family has filled, and `model.num_labels` from `label_count` as
    `with_label_count` sets it (None: not read)."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    if architecture:
        out.model.update(architecture)
    config_lib.validate(out)   # the architecture of a source meets this run's other keys here
    for name, value in _derived(out).items():
        section, leaf = name.split(".")
        out[section][leaf] = value
    resolved = ml_collections.FrozenConfigDict(out)
    return resolved if label_count is None else with_label_count(resolved, label_count)


def with_label_count(cfg: ml_collections.FrozenConfigDict, label_count: int) -> ml_collections.FrozenConfigDict:
    """The resolved `cfg` with `model.num_labels` = `label_count` (the labels of the run's data) where it
    is 0; a `label_count` other than a non-zero num_labels is a UserError. Nothing else changes: no
    derived value reads the label count."""
    if cfg.model.num_labels == label_count:
        return cfg
    if cfg.model.num_labels != 0:
        raise UserError(f"model.num_labels is {cfg.model.num_labels} but the data has {label_count} labels; "
                        f"set it to 0 to take the count from the data")
    return replaced(cfg, "model", num_labels=label_count)


def replaced(cfg: ml_collections.FrozenConfigDict, section: str, **values) -> ml_collections.FrozenConfigDict:
    """A copy of the resolved `cfg` with `values` in `section`, for keys no derived value reads (so the
    copy is as resolved as `cfg`): the label count, or how a step is run (`flax-lm compile`'s variants)."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    out[section].update(values)
    return ml_collections.FrozenConfigDict(out)


def in_schema_order(cfg) -> ml_collections.ConfigDict:
    """An unlocked copy of `cfg` with its keys in the schema's order (a FrozenConfigDict sorts them),
    as a person reads a saved config.json: task, model, data, train, ..."""
    out = defaults.get_config()
    out.update(cfg.to_dict())
    return out
