"""What a task gives the shared train step, evaluator, `predict`, `compile` and the end of a run.

A loss is one or more terms (e.g. masked LM and next-sentence prediction), each a sum
over examples or tokens with its own weight. The weights come from the batch alone, so
the step knows every term's total before it runs the model, and the objective
sum_k(loss_sum_k / weight_k) splits over micro-batches and devices exactly.

Beyond the step, a task owns what only it knows: the shapes of its batches (`batch_spec`, which
ahead-of-time compilation lowers the step with), the scores of text it generates, the records
`predict` writes and the sample printed when training ends. Those that need a trained model get it
as an `Inference` (the training layer makes one from a run and its parameters).
"""

from typing import Callable, Protocol

import flax.linen as nn
import jax
import numpy as np

from flax_lm.tasks import prediction_formats

Terms = dict[str, jax.Array]  # loss term -> summed loss (or its weight)


class Inference(Protocol):
    """A trained model as a task's predictions, scores and samples use it."""

    def outputs(self, dataset) -> dict[str, np.ndarray]:
        """The per-example outputs of the task's `loss` on every example of `dataset`, in its order."""

    def generate(self, prompt_ids: list[list[int]]) -> list[str]:
        """The text generated for each prompt (token ids), with the run's `sample` settings."""

    def continue_text(self, prompt: str) -> str:
        """`prompt` followed by one continuation generated with the run's `sample` settings."""


class Task:
    """The methods every task has; the defaults are those of a task that generates no scored text."""

    # extension of `predict --output` -> records -> the file's text
    output_formats: dict[str, Callable[[list[dict]], str]] = prediction_formats.COMMON

    def weights(self, batch: dict) -> Terms:
        """Per loss term, how many examples or tokens of `batch` count (from the data alone)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, params, batch: dict, *, rngs: dict | None,
             deterministic: bool) -> tuple[Terms, dict[str, jax.Array]]:
        """Runs the model on `batch`: (per loss term the summed loss, per-example outputs for the
        metrics and `predict`, arrays leading with the batch). Training drops the outputs,
        and jit drops their computation with them."""
        raise NotImplementedError

    def metrics(self, outputs: dict[str, np.ndarray], dataset, term_losses: dict[str, float]) -> dict[str, float]:
        """Task metrics from all of a split's outputs (in dataset order) and its mean term losses."""
        raise NotImplementedError

    def batch_spec(self, cfg, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shape and dtype of each array of a batch of `batch_size` examples, as the task's data
        gives it for `cfg` (at its widest, where batches are padded dynamically)."""
        raise NotImplementedError

    def generated_metrics(self, inference: Inference, dataset, names: list[str], count: int) -> dict[str, float]:
        """Scores `names` (train.generate_metrics) of the text generated for the first `count`
        examples of `dataset`; none for a task whose data has no reference text."""
        return {}

    def predictions(self, inference: Inference, dataset) -> list[dict]:
        """One record per example of `dataset` (read by `flax-lm predict`), fields in output order."""
        raise NotImplementedError(f"{type(self).__name__} makes no predictions")

    def end_of_run_sample(self, inference: Inference, validation, prompt: str) -> str | None:
        """What a finished run prints to show its model at work (`sample.prompt` is the prompt
        of a text continuation); None for nothing."""
        return None


def shapes(spec: dict[str, tuple[tuple[int, ...], object]]) -> dict[str, jax.ShapeDtypeStruct]:
    """{name: (shape, dtype)} -> {name: jax.ShapeDtypeStruct}."""
    return {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype) in spec.items()}


def total_loss(sums: Terms, weights: Terms):
    """sum_k sums[k] / weights[k], with empty terms counting zero."""
    return sum(sums[k] / jax.numpy.maximum(weights[k], 1.0) for k in sums)
