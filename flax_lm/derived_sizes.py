"""The model sizes that 0 leaves to be derived, and the one rule of each.

`model.d_ff` 0 is 4 * d_model, `model.head_dim` 0 is d_model // n_heads, `model.n_kv_heads` 0 is
n_heads, `model.n_decoder_layers` 0 is n_layers. Two layers meet these zeros: `flax_lm.config.resolve`
fills a run config's (each family's defaults block names the sizes it has) before the run saves its
config.json, and a family's model config dataclass fills its own fields when it is built without a
resolved run config (from a Hugging Face config.json, or directly in a test). Both read this table; it
imports nothing, so it sits below both.
"""

from typing import Callable, Mapping

# size -> (what its 0 stands for, in words; the rule, over the sizes by name). A rule reads only sizes
# that are never derived, so the sizes can be filled in any order.
RULES: dict[str, tuple[str, Callable[[Mapping], int]]] = {
    "d_ff": ("4 * d_model", lambda sizes: 4 * sizes["d_model"]),
    "head_dim": ("d_model // n_heads", lambda sizes: sizes["d_model"] // sizes["n_heads"]),
    "n_kv_heads": ("n_heads", lambda sizes: sizes["n_heads"]),
    "n_decoder_layers": ("n_layers", lambda sizes: sizes["n_layers"]),
}


def filled(sizes: Mapping, names) -> dict[str, int]:
    """Each size of `names` (keys of `RULES`): its value in `sizes` (a run config's model section, or a
    model config dataclass's fields, by name), or where that is 0 the value its rule derives."""
    return {name: sizes[name] or RULES[name][1](sizes) for name in names}
