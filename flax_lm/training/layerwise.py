"""Per-layer scaling of the updates: layer-wise learning-rate decay and gradual unfreezing.

A parameter's depth is 0 for the embeddings, l for Transformer layer l (1..L) and L + 1
for everything above (final norm, pooler, task heads). Scanned layer stacks get one depth
per slice of their leading axis.
"""

import re

import jax
import jax.numpy as jnp
import optax

from flax_lm.parallel.sharding import param_names

_EMBEDDINGS = ("embeddings", "wte", "wpe", "embed_tokens")
_LAYER = re.compile(r"^(?:layer|h)_(\d+)$")
_SCANNED = ("layers", "h")


def depth(path, leaf, n_layers: int):
    """The depth of the parameter at `path`: an int, or for a scanned stack an array (L, 1, ...)."""
    for name in param_names(path):
        if name in _EMBEDDINGS:
            return 0
        match = _LAYER.match(name)
        if match:
            return int(match.group(1)) + 1
        if name in _SCANNED and leaf.ndim and leaf.shape[0] == n_layers:
            return jnp.arange(1, n_layers + 1).reshape((n_layers,) + (1,) * (leaf.ndim - 1))
    return n_layers + 1


def scale_by_layer(n_layers: int, layer_decay: float, unfreeze_top_layers: int,
                   unfreeze_every: int) -> optax.GradientTransformation:
    """Multiplies each update by layer_decay^(L + 1 - depth), and by 0 while its layer is frozen.

    With gradual unfreezing the heads and the top `unfreeze_top_layers` layers train from
    step 0, and one more layer (the embeddings last) every `unfreeze_every` steps.
    """

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        if unfreeze_top_layers:
            unfrozen = unfreeze_top_layers + (state.count // unfreeze_every if unfreeze_every else 0)
        else:
            unfrozen = n_layers + 1

        def scale(path, u):
            d = depth(path, u, n_layers)
            factor = jnp.asarray(layer_decay, jnp.float32) ** (n_layers + 1 - d)
            factor = jnp.where(d > n_layers - unfrozen, factor, 0.0)
            return (u * factor).astype(u.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates), optax.ScaleByScheduleState(
            count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)
