"""The one train step and eval step of every task.

The step is a pure function (state, batch) -> (state, metrics). Each loss term's total
weight is read from the whole batch first; gradient accumulation then runs as a
`lax.scan` over micro-batches whose losses are divided by those totals, so k
micro-batches give exactly the gradient of one k-times-larger batch.

A step whose loss or gradient norm is not finite changes no parameter and no optimizer
moment (`update_if_finite`) and is flagged in the metrics as
`nonfinite`. With the "skip" policy it is counted in `skipped_steps` and the step counter
moves on (the batch is consumed); with "stop" the whole state stays as it was, so the loop
can save exactly the last good state.

Under `jax.pmap` (parallel.strategy=pmap, `axis_name` set) each device runs the step on its
own rows of the batch: the loss weights are summed over the devices first, so each device's
loss is its share of the global mean, and the gradients and loss sums are then summed over the
devices (`lax.psum`): exactly the gradient of the whole batch, as under `jax.jit`.
"""

import jax
import jax.numpy as jnp
import optax

from flax_lm import backends
from flax_lm.parallel import sharding
from flax_lm.tasks.base import Task, total_loss
from flax_lm.training.train_state import TrainState


def make_train_step(model, task: Task, tx: optax.GradientTransformation, schedule, grad_accum_steps: int,
                    nonfinite_policy: str = "skip", axis_name: str | None = None):
    """Returns train_step(state, batch) -> (state, metrics); batch arrays lead with the global batch,
    or, with `axis_name` (the step runs under `jax.pmap` over that axis), with this device's rows."""
    tx = optax.with_extra_args_support(tx)  # it is given the gradient norm (`optim.clip_by_global_norm`)

    def micro_grads(params, micro_batch, weights, rng):
        def objective(p):
            sums, _ = task.loss(model, p, micro_batch, rngs={"dropout": rng}, deterministic=False)
            return total_loss(sums, weights), sums
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, sums

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        weights = task.weights(batch)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))  # each device its own dropout
            weights = jax.lax.psum(weights, axis_name)
        if grad_accum_steps == 1:
            grads, sums = micro_grads(state.params, batch, weights, rng)
        else:
            # (B, ...) -> (k, B/k, ...) taking every k-th row, so each device keeps its rows.
            micro = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1),
                batch)

            def accumulate(carry, xs):
                i, micro_batch = xs
                out = micro_grads(state.params, micro_batch, weights, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, out), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), jax.tree.map(jnp.zeros_like, weights))
            (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
        if axis_name is not None:  # one all-reduce a step, after the micro-batches
            grads, sums = jax.lax.psum((grads, sums), axis_name)
        loss, grad_norm = total_loss(sums, weights), optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(params, opt_state):
            updates, opt_state = tx.update(grads, opt_state, params, grad_norm=grad_norm)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = backends.current().update_if_finite(finite, update, state.params, state.opt_state)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "nonfinite": (~finite).astype(jnp.int32),
            "skipped_steps": state.skipped_steps + (~finite & (nonfinite_policy == "skip")),
        }
        if len(sums) > 1:
            metrics.update({f"loss/{k}": sums[k] / jnp.maximum(weights[k], 1.0) for k in sums})
        advance = finite | (nonfinite_policy == "skip")
        return state.replace(step=state.step + advance, params=params, opt_state=opt_state,
                             skipped_steps=metrics["skipped_steps"]), metrics

    return train_step


def jit_train_step(model, task: Task, tx, schedule, train_cfg, mesh, state_shardings):
    """The train step jitted for `mesh`: the state keeps `state_shardings` (and is donated),
    batches are split over the data axes, metrics come back replicated."""
    with sharding.activate(mesh):
        return jax.jit(
            make_train_step(model, task, tx, schedule, train_cfg.grad_accum_steps, train_cfg.nonfinite_policy),
            in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
            out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def make_eval_step(model, task: Task):
    """Returns eval_step(params, batch) -> (loss sums per term, weights per term, per-example outputs)."""

    def eval_step(params, batch):
        sums, outputs = task.loss(model, params, batch, rngs=None, deterministic=True)
        return sums, task.weights(batch), outputs

    return eval_step
