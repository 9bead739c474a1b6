"""Validation loss and perplexity over held-out windows."""

import math

import jax
import numpy as np

from flax_lm import sharding
from flax_lm.data import lm_data
from flax_lm.train_step import make_eval_step


def make_evaluator(run, task):
    """Returns evaluate_tokens(params, tokens, max_batches=0) -> metrics for a run, with its
    eval step compiled once; batches are the run's micro-batch size."""
    with sharding.activate(run.mesh):
        eval_step = jax.jit(make_eval_step(run.model, task))
    t = run.cfg.train

    def evaluate_tokens(params, tokens: np.ndarray, max_batches: int = 0) -> dict[str, float]:
        with sharding.activate(run.mesh):
            return evaluate(eval_step, params, tokens, run.cfg.model.max_len, t.batch_size // t.grad_accum_steps,
                            max_batches, run.to_global)

    return evaluate_tokens


def evaluate(eval_step, params, tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int,
             to_global) -> dict[str, float]:
    """Mean token loss and perplexity over the first `max_batches` batches (0: all windows).

    The last partial batch is padded with zero-weight rows, so every window counts once.
    `to_global` turns a host batch into device arrays on the mesh.
    """
    n = lm_data.num_windows(tokens, seq_len)
    n_batches = math.ceil(n / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    sums = []
    for b in range(n_batches):
        indices = np.arange(b * batch_size, (b + 1) * batch_size)
        batch = lm_data.windows(tokens, np.minimum(indices, n - 1), seq_len)
        batch["weights"] *= (indices < n)[:, None].astype(np.float32)
        sums.append(eval_step(params, to_global(batch)))  # dispatched; read once at the end
    loss_sum, weight_sum = (float(np.sum(x)) for x in zip(*jax.device_get(sums)))
    loss = loss_sum / max(weight_sum, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": weight_sum}
