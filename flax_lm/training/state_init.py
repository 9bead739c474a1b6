"""Creating the train state directly in its sharded layout.

`jax.eval_shape` of the initialiser gives the logically-annotated (boxed) structure;
its logical specs become mesh shardings, and the real initialiser is jitted with
those `out_shardings`, so no host ever holds the whole unsharded state.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_lm.parallel import sharding
from flax_lm.errors import UserError
from flax_lm.models import lora, t5
from flax_lm.training.train_state import TrainState


def rngs(seed: int) -> tuple[jax.Array, jax.Array]:
    """(parameter-init key, the train state's key for dropout) derived from the seed."""
    params_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    return params_rng, state_rng


def _init_params(model, seed: int, seq_len: int):
    """The model's freshly initialised (boxed) parameters (an encoder-decoder also takes decoder ids)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    inputs = (ids, ids) if isinstance(model, t5.T5ForConditionalGeneration) else (ids,)
    return model.init({"params": rngs(seed)[0]}, *inputs)["params"]


def _init_fn(model, tx, seed: int, seq_len: int):
    def init():
        params = _init_params(model, seed, seq_len)
        return TrainState.fresh(params, sharding.unbox_reshaped(tx.init(params), params), rngs(seed)[1])
    return init


def host_params(model, seed: int, seq_len: int) -> dict:
    """Freshly initialised parameters as host numpy arrays (e.g. for a head a source lacks)."""
    params = jax.jit(lambda: nn.unbox(_init_params(model, seed, seq_len)))()
    return jax.tree.map(np.asarray, jax.device_get(params))


def state_shardings(model, tx, mesh, seed: int, seq_len: int):
    """(abstract unboxed TrainState, its NamedShardings); a tensor that does not divide over
    the mesh axes its sharding names is a UserError naming it."""
    boxed = jax.eval_shape(_init_fn(model, tx, seed, seq_len))
    shardings = sharding.logical_sharding(boxed, mesh)
    abstract = nn.unbox(boxed)
    settings = getattr(model, "lora", None)
    if settings is not None and not lora.split(abstract.params)[1]:
        raise UserError(f"peft.targets={','.join(settings.targets)} matches no projection of this "
                        f"{settings.family} model; name its attention or MLP projections (see docs/training.md)")
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(abstract.params),
                            jax.tree.leaves(shardings.params)):
        try:
            s.shard_shape(x.shape)
        except ValueError:  # jax's IndivisibleError
            raise UserError(f"parameter {jax.tree_util.keystr(path)} of shape {x.shape} does not divide over the "
                            f"mesh axes {tuple(s.spec)} of sizes {dict(mesh.shape)}; change parallel.* or the model "
                            f"(e.g. pad model.vocab_size to a multiple of 128)") from None
    return abstract, shardings


def state_from_params(params, tx, abstract_state, shardings, seed: int, fresh: dict | None = None) -> TrainState:
    """A step-0 TrainState around given host `params` (e.g. imported), with a fresh optimizer
    state; every array is placed on its sharding. LoRA adapters that `params` lacks (a pretrained
    base) are taken from `fresh` (host parameters of the same adapted model), so they are added
    after the base weights are loaded."""
    if fresh is not None and not lora.split(params)[1]:
        params = lora.combine(params, lora.split(fresh)[1])
    params = jax.tree.map(lambda x, like, s: jax.device_put(np.asarray(x, like.dtype), s), params,
                          abstract_state.params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return TrainState.fresh(params, opt_state, rngs(seed)[1])


def create_state(model, tx, mesh, seed: int, seq_len: int, shardings) -> TrainState:
    """A freshly initialised TrainState, created sharded on `mesh`."""
    init = _init_fn(model, tx, seed, seq_len)
    with sharding.activate(mesh):
        return jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
