"""Optax AdamW with warmup + decay, global-norm clipping and a weight-decay mask."""

import jax
import optax
from jax.tree_util import DictKey

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
        names = [k.key for k in path if isinstance(k, DictKey)]
        return names[-1] in DECAYED_NAMES
    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
    """The optimizer of every task: clip, then AdamW with the schedule and decay mask."""
    adamw = optax.adamw(
        learning_rate_schedule(optim_cfg, total_steps), b1=optim_cfg.b1, b2=optim_cfg.b2,
        eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, mask=decay_mask)
    if optim_cfg.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
    return adamw


