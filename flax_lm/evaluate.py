"""Evaluation of any task on a split: its loss terms and the task's metrics."""

import math

import jax
import numpy as np

from flax_lm import sharding
from flax_lm.train_step import make_eval_step


def make_evaluator(run, task):
    """Returns evaluate_split(params, dataset, max_batches=0) -> metrics for a run, with its eval
    step compiled once; batches are the run's micro-batch size. `evaluate_split.outputs(params,
    dataset)` gives the per-example outputs instead (for `predict`)."""
    with sharding.activate(run.mesh):
        eval_step = jax.jit(make_eval_step(run.model, task))
    t = run.cfg.train

    def evaluate_split(params, dataset, max_batches: int = 0) -> dict[str, float]:
        with sharding.activate(run.mesh):
            return evaluate(eval_step, task, params, dataset, t.batch_size // t.grad_accum_steps, max_batches,
                            run.to_global)

    def outputs(params, dataset) -> dict[str, np.ndarray]:
        with sharding.activate(run.mesh):
            return run_batches(eval_step, params, dataset, t.batch_size // t.grad_accum_steps, 0, run.to_global)[1]

    evaluate_split.outputs = outputs
    return evaluate_split


def evaluate(eval_step, task, params, dataset, batch_size: int, max_batches: int, to_global) -> dict[str, float]:
    """Loss and task metrics over the first `max_batches` batches of `dataset` (0: all of it)."""
    term_losses, outputs = run_batches(eval_step, params, dataset, batch_size, max_batches, to_global)
    metrics = {"loss": sum(term_losses.values()),
               "examples": float(min(len(dataset), _count(dataset, batch_size, max_batches)))}
    if len(term_losses) > 1:
        metrics.update({f"loss/{k}": v for k, v in term_losses.items()})
    metrics.update(task.metrics(outputs, dataset, term_losses))
    return metrics


def run_batches(eval_step, params, dataset, batch_size: int, max_batches: int, to_global):
    """(mean loss per term, per-example outputs in dataset order) over the first `max_batches`
    batches of `dataset` (0: all of it).

    The last partial batch is padded with zero-weight copies of the last example, so every
    example counts once; their outputs are dropped. `to_global` turns a host batch into
    device arrays on the mesh.
    """
    n = len(dataset)
    results = []
    for b in range(_count(dataset, batch_size, max_batches) // batch_size):
        indices = np.arange(b * batch_size, (b + 1) * batch_size)
        batch = dataset.batch(np.minimum(indices, n - 1))
        valid = indices < n
        batch["weights"] = batch["weights"] * valid.reshape(-1, *[1] * (batch["weights"].ndim - 1))
        results.append(eval_step(params, to_global(batch)))  # dispatched; read once at the end
    sums, weights, outputs = zip(*jax.device_get(results))
    count = min(n, len(results) * batch_size)
    outputs = {k: np.concatenate([o[k] for o in outputs])[:count] for k in outputs[0]}
    total = {k: float(np.sum([s[k] for s in sums])) for k in sums[0]}
    weight = {k: float(np.sum([w[k] for w in weights])) for k in weights[0]}
    return {k: total[k] / max(weight[k], 1.0) for k in total}, outputs


def _count(dataset, batch_size: int, max_batches: int) -> int:
    """Rows in the batches to run (a multiple of the batch size)."""
    n_batches = math.ceil(len(dataset) / batch_size)
    return batch_size * (min(n_batches, max_batches) if max_batches else n_batches)
