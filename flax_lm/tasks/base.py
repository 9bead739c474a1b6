"""What a task gives the shared train step, evaluator and `predict`.

A loss is one or more terms (e.g. masked LM and next-sentence prediction), each a sum
over examples or tokens with its own weight. The weights come from the batch alone, so
the step knows every term's total before it runs the model, and the objective
sum_k(loss_sum_k / weight_k) splits over micro-batches and devices exactly.
"""

from typing import Protocol

import flax.linen as nn
import jax
import numpy as np

Terms = dict[str, jax.Array]  # loss term -> summed loss (or its weight)


class Task(Protocol):
    def weights(self, batch: dict) -> Terms:
        """Per loss term, how many examples or tokens of `batch` count (from the data alone)."""

    def loss(self, model: nn.Module, params, batch: dict, *, rngs: dict | None,
             deterministic: bool) -> tuple[Terms, dict[str, jax.Array]]:
        """Runs the model on `batch`: (per loss term the summed loss, per-example outputs for the
        metrics and `predict`, arrays leading with the batch). Training drops the outputs,
        and jit drops their computation with them."""

    def metrics(self, outputs: dict[str, np.ndarray], dataset, term_losses: dict[str, float]) -> dict[str, float]:
        """Task metrics from all of a split's outputs (in dataset order) and its mean term losses."""


def total_loss(sums: Terms, weights: Terms):
    """sum_k sums[k] / weights[k], with empty terms counting zero."""
    return sum(sums[k] / jax.numpy.maximum(weights[k], 1.0) for k in sums)
