"""Optax AdamW or Adafactor with warmup + decay, global-norm clipping and a weight-decay mask.

Adafactor (T5's optimizer) keeps factored second moments (a row and a column vector for each
matrix of at least 128 x 128) and, by default, scales each update by its parameter's RMS, so a
step is relative to the weight's size: T5's small attention weights and its unit-variance
embeddings move alike. It has no first moment (momentum) here, as in T5.
"""

import jax
import jax.numpy as jnp
import optax

from flax_lm.training.layerwise import scale_by_layer
from flax_lm.parallel.sharding import param_names

# Parameters that get weight decay: matrices and embeddings. Biases, LayerNorm scales
# and any other vector stay undecayed, as in GPT-2/BERT practice.
DECAYED_NAMES = ("kernel", "embedding")


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine/linear decay to peak * min_lr_ratio."""
    peak = optim_cfg.learning_rate
    warmup = optim_cfg.warmup_steps
    end = peak * optim_cfg.min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if optim_cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim_cfg.min_lr_ratio)
    elif optim_cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
    """True for parameters that get weight decay (works on boxed and unboxed trees)."""
    def is_decayed(path, _):
        return param_names(path)[-1] in DECAYED_NAMES
    return jax.tree_util.tree_map_with_path(is_decayed, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` as one multiplication by min(1, max_norm / norm).

    Optax selects between each gradient and its divided copy; XLA:CPU writes the divided copy
    out and keeps copies of the old Adam moments alive for the parameter update. AdamW on
    bert_base's 109M parameters (jitted, state donated): 221 ms a step with optax's clipping,
    135 ms with this one, 101 ms with none. The state is optax's, so checkpoints stay readable.
    A caller that has the norm already passes it as the extra argument `grad_norm` (the train
    step does): inside the CPU step's `lax.cond` XLA cannot merge a second pass over the
    gradients with the first."""
    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        scale = jnp.minimum(1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
    return optax.GradientTransformationExtraArgs(lambda params: optax.ClipByGlobalNormState(), update)


def make_optimizer(optim_cfg, total_steps: int, n_layers: int) -> optax.GradientTransformation:
    """The optimizer of every task: clip, then AdamW (or Adafactor) with the schedule and decay mask, then
    (when configured) layer-wise decay and gradual unfreezing of the whole update, weight
    decay included, so a frozen layer does not move at all."""
    chain = []
    if optim_cfg.grad_clip_norm > 0:
        chain.append(clip_by_global_norm(optim_cfg.grad_clip_norm))
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    if optim_cfg.optimizer == "adafactor":
        chain.append(optax.adafactor(schedule, weight_decay_rate=optim_cfg.weight_decay or None,
                                     weight_decay_mask=decay_mask))
    else:
        chain.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                                 weight_decay=optim_cfg.weight_decay, mask=decay_mask))
    if optim_cfg.layer_decay != 1.0 or optim_cfg.unfreeze_top_layers:
        chain.append(scale_by_layer(n_layers, optim_cfg.layer_decay, optim_cfg.unfreeze_top_layers,
                                    optim_cfg.unfreeze_every))
    return chain[0] if len(chain) == 1 else optax.chain(*chain)




def zero_updates_except(trainable) -> optax.GradientTransformation:
    """Last in a chain: the updates of the leaves `trainable(params)` marks False become zero, weight
    decay included, so they stay bit-unchanged. The optimizer state keeps its usual layout (frozen
    leaves keep zero moments), unlike `freeze_except`'s, so checkpoints and shardings are unchanged."""
    def update(updates, state, params=None):
        mask = trainable(updates)
        return jax.tree.map(lambda u, t: u if t else jnp.zeros_like(u), updates, mask), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def freeze_except(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
    """`tx` on the leaves `trainable` marks True (a tree of bools or a function of the params);
    every other leaf gets a zero update and holds no optimizer state (LoRA's frozen base)."""
    def labels(params):
        mask = trainable(params) if callable(trainable) else trainable
        return jax.tree.map(lambda t: "train" if t else "frozen", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
