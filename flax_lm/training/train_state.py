"""The train state: everything a step reads and writes, as one pytree."""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken; rng: base key, folded with the step for dropout;
    skipped_steps: steps whose update was dropped because the loss or gradients were not finite."""

    step: jax.Array
    params: dict
    opt_state: object
    rng: jax.Array
    skipped_steps: jax.Array

    @classmethod
    def fresh(cls, params, opt_state, rng: jax.Array) -> "TrainState":
        """A state at step 0."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng,
                   skipped_steps=jnp.zeros((), jnp.int32))
