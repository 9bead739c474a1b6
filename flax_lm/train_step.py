"""The one train step and eval step of every task.

The step is a pure function (state, batch) -> (state, metrics). Gradient accumulation
runs as a `lax.scan` over micro-batches inside the step; losses are summed and divided
by the total weight once, so k micro-batches equal one k-times-larger batch.
"""

import jax
import jax.numpy as jnp
import optax

from flax_lm.tasks.base import LossOutput, Task
from flax_lm.train_state import TrainState


def make_train_step(model, task: Task, tx: optax.GradientTransformation, schedule, grad_accum_steps: int):
    """Returns train_step(state, batch) -> (state, metrics); batch arrays lead with the global batch."""

    def micro_grads(params, micro_batch, rng):
        def loss_sum(p):
            out = task.loss(model, p, micro_batch, rngs={"dropout": rng}, deterministic=False)
            return out.loss_sum, out.weight_sum
        (loss, weight), grads = jax.value_and_grad(loss_sum, has_aux=True)(params)
        return grads, LossOutput(loss, weight)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            grads, out = micro_grads(state.params, batch, rng)
        else:
            # (B, ...) -> (k, B/k, ...) taking every k-th row, so each device keeps its rows.
            micro = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1),
                batch)

            def accumulate(carry, xs):
                i, micro_batch = xs
                grads, out = micro_grads(state.params, micro_batch, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (grads, out)), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), LossOutput(jnp.float32(0), jnp.float32(0)))
            (grads, out), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
        weight = jnp.maximum(out.weight_sum, 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": out.loss_sum / weight,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
            "tokens": out.weight_sum,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model, task: Task):
    """Returns eval_step(params, batch) -> LossOutput (sums, deterministic)."""

    def eval_step(params, batch):
        return task.loss(model, params, batch, rngs=None, deterministic=True)

    return eval_step
