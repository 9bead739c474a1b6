"""Evaluation of any task on a split: its loss terms and the task's metrics."""

import math

import jax
import numpy as np

from flax_lm.config import load as config_lib
from flax_lm.parallel import sharding
from flax_lm.data import length_buckets
from flax_lm.training.inference import RunInference
from flax_lm.training.train_step import make_eval_step


def make_evaluator(run, task):
    """Returns evaluate_split(params, dataset, max_batches=0) -> metrics for a run, with its eval
    step compiled once; batches are the run's micro-batch size. A task that generates text scores
    it too (`train.generate_metrics`, `Task.generated_metrics`). `evaluate_split.outputs(params,
    dataset)` gives the per-example outputs instead (for `predict`), and
    `evaluate_split.inference(params)` the model as the task's predictions and samples use it.

    Every process loads each whole batch and places its own rows; the results come back replicated,
    so every process can read them (several processes cannot read an array sharded over them)."""
    with sharding.activate(run.mesh):
        eval_step = jax.jit(make_eval_step(run.model, task), out_shardings=sharding.replicated(run.mesh))
    t = run.cfg.train
    generated = config_lib.metric_names(t.generate_metrics)

    def evaluate_split(params, dataset, max_batches: int = 0) -> dict[str, float]:
        micro_batch = t.batch_size // t.grad_accum_steps
        with sharding.activate(run.mesh):
            metrics = evaluate(eval_step, task, params, dataset, micro_batch, max_batches, run.whole_to_global)
        count = min(len(dataset), max_batches * micro_batch) if max_batches else len(dataset)  # those the loss saw
        metrics.update(task.generated_metrics(inference(params), dataset, generated, count))
        return metrics

    def outputs(params, dataset) -> dict[str, np.ndarray]:
        with sharding.activate(run.mesh):
            return run_batches(eval_step, params, dataset, t.batch_size // t.grad_accum_steps, 0,
                               run.whole_to_global)[1]

    def inference(params) -> RunInference:
        return RunInference(run, params, outputs)

    evaluate_split.outputs, evaluate_split.inference = outputs, inference
    return evaluate_split


def format_metrics(metrics: dict) -> str:
    """The headline metrics (no per-class breakdown) as one line; counts as integers."""
    return ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k)


def evaluate(eval_step, task, params, dataset, batch_size: int, max_batches: int, to_global) -> dict[str, float]:
    """Loss and task metrics over the first `max_batches` batches of `dataset` (0: all of it)."""
    term_losses, outputs = run_batches(eval_step, params, dataset, batch_size, max_batches, to_global)
    metrics = {"loss": sum(term_losses.values()),
               "examples": min(len(dataset), _count(dataset, batch_size, max_batches))}
    if len(term_losses) > 1:
        metrics.update({f"loss/{k}": v for k, v in term_losses.items()})
    metrics.update(task.metrics(outputs, dataset, term_losses))
    return metrics


def run_batches(eval_step, params, dataset, batch_size: int, max_batches: int, to_global):
    """(mean loss per term, per-example outputs in dataset order) over the first `max_batches`
    batches of `dataset` (0: all of it).

    The last partial batch is padded with zero-weight copies of an example, so every example
    counts once; their outputs are dropped. A dynamically padded split runs its examples in
    order of length, so each batch is cut short (its outputs come back in dataset order).
    `to_global` turns a host batch into device arrays on the mesh.
    """
    count = min(len(dataset), _count(dataset, batch_size, max_batches))
    order = np.arange(count)
    padding = length_buckets.padding_of(dataset)
    if padding is not None:
        order = order[np.argsort(padding.lengths[:count], kind="stable")]
    results = []
    for start in range(0, count, batch_size):
        rows = np.arange(start, start + batch_size)
        indices = order[np.minimum(rows, count - 1)]
        batch = length_buckets.load_batch(dataset, indices)
        valid = rows < count
        batch["weights"] = batch["weights"] * valid.reshape(-1, *[1] * (batch["weights"].ndim - 1))
        results.append(eval_step(params, to_global(batch)))  # dispatched; read once at the end
    sums, weights, outputs = zip(*jax.device_get(results))
    outputs = {k: _in_dataset_order([o[k] for o in outputs], order) for k in outputs[0]}
    total = {k: float(np.sum([s[k] for s in sums])) for k in sums[0]}
    weight = {k: float(np.sum([w[k] for w in weights])) for k in weights[0]}
    return {k: total[k] / max(weight[k], 1.0) for k in total}, outputs


def _in_dataset_order(batches: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """One output's batches (run in `order`) as one array in dataset order; per-token outputs of
    batches cut to different widths are zero-padded to the widest."""
    width = max(b.shape[1] for b in batches) if batches[0].ndim > 1 else None
    if width is not None:
        batches = [np.pad(b, [(0, 0), (0, width - b.shape[1])] + [(0, 0)] * (b.ndim - 2)) for b in batches]
    ran = np.concatenate(batches)[:len(order)]
    out = np.empty_like(ran)
    out[order] = ran
    return out


def _count(dataset, batch_size: int, max_batches: int) -> int:
    """Rows in the batches to run (a multiple of the batch size)."""
    n_batches = math.ceil(len(dataset) / batch_size)
    return batch_size * (min(n_batches, max_batches) if max_batches else n_batches)
