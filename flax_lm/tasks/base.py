"""What a task gives the shared train step."""

from typing import NamedTuple, Protocol

import flax.linen as nn
import jax


class LossOutput(NamedTuple):
    """Sums, not means, so micro-batches and devices add up exactly.

    loss_sum: summed per-example (or per-token) loss; weight_sum: how many were summed.
    """

    loss_sum: jax.Array
    weight_sum: jax.Array


class Task(Protocol):
    def loss(self, model: nn.Module, params, batch: dict, *, rngs: dict | None,
             deterministic: bool) -> LossOutput:
        """Runs the model on `batch` and returns the summed loss and its weight."""
