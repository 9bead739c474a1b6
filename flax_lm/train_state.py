"""The train state: everything a step reads and writes, as one pytree."""

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken; rng: base key, folded with the step for dropout."""

    step: jax.Array
    params: dict
    opt_state: object
    rng: jax.Array
