"""A run's config resolved: every value the schema leaves to be derived, filled once, then locked.

Some keys mean "derived" at 0 (`data.seq_len`: model.max_len, `data.target_len`: data.seq_len, ...);
a run from `train.init_from` takes the source's architecture; a classification run takes its
label count from its data. `resolve` fills all of them in one place, from the facts its caller
gathered, and returns a `FrozenConfigDict`: what a run builds from and saves in its workdir, and
what no later code can change. The keys that depend on the devices (`parallel.data=-1`,
`peak_flops_per_device=0`) and `train.steps=0` (counted from `train.epochs` and the data) are
not config values to fill: the mesh and the run's step count hold them. Nor are the model's
shape keys at 0 (`model.d_ff`, `model.head_dim`, `model.n_kv_heads`, `model.n_decoder_layers`): each
family's config dataclass derives them as that family means them (GPT-2 has no `head_dim` or
`n_kv_heads` of its own to state), and a resume compares the keys they derive from.
"""

import math

import ml_collections

from flax_lm.config import defaults
from flax_lm.config import load as config_lib
from flax_lm.errors import UserError


def _derived(cfg) -> dict[str, object]:
    """What each "0 means derived" key of `cfg` (an unlocked config, its architecture final) stands
    for, by dotted name, in an order where a value is derived after those it reads."""
    d = cfg.data
    seq_len = d.seq_len or cfg.model.max_len
    return {
        "data.seq_len": seq_len,
        "data.target_len": d.target_len or seq_len,
        "data.max_predictions": d.max_predictions or math.ceil(d.mask_prob * seq_len),
    }


DERIVED = tuple(_derived(defaults.get_config()))   # the keys `resolve` fills when they are 0


def resolve(cfg, *, architecture: dict | None = None, label_count: int | None = None
            ) -> ml_collections.FrozenConfigDict:
    """`cfg` (a validated config, left as it is) resolved and locked: the `model` values of
    `architecture` (those of train.init_from's source, by leaf name) over its own, `model.num_labels`
    from `label_count` (the labels of the run's data; None: not read) where it is 0, and every key of
    `DERIVED` that is 0 filled. A `label_count` other than a non-zero num_labels is a UserError."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    if architecture:
        out.model.update(architecture)
    if label_count is not None:
        if out.model.num_labels == 0:
            out.model.num_labels = label_count
        elif out.model.num_labels != label_count:
            raise UserError(f"model.num_labels is {out.model.num_labels} but the data has {label_count} labels; "
                            f"set it to 0 to take the count from the data")
    config_lib.validate(out)   # the architecture of a source meets this run's other keys here
    for name, value in _derived(out).items():
        section, leaf = name.split(".")
        out[section][leaf] = value
    return ml_collections.FrozenConfigDict(out)


def in_schema_order(cfg) -> ml_collections.ConfigDict:
    """An unlocked copy of `cfg` with its keys in the schema's order (a FrozenConfigDict sorts them),
    as a person reads a saved config.json: task, model, data, train, ..."""
    out = defaults.get_config()
    out.update(cfg.to_dict())
    return out
