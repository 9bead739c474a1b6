"""How long a run trains: `train.steps`, or `train.epochs` passes over the training split.

Exactly one of the two is non-zero in a config. An epoch is `examples // train.batch_size`
optimizer steps: the batch iterator drops an epoch's incomplete last batch, and a step takes
`train.batch_size` examples however many micro-batches (`train.grad_accum_steps`) it is cut
into. The learning-rate schedule (warmup, then decay to the last step) spans the steps
derived here, so a run counted in epochs decays over exactly its epochs.
"""

import math

from flax_lm.errors import UserError


def problems(train_cfg, warmup_steps: int) -> list[str]:
    """What is wrong with the training length of a config (no data needed), one line each."""
    steps, epochs = train_cfg.steps, train_cfg.epochs
    found = []
    if steps < 0 or epochs < 0:
        found.append(f"train.steps and train.epochs must be >= 0; got {steps} and {epochs:g}")
    elif steps and epochs:
        found.append(f"train.steps ({steps}) and train.epochs ({epochs:g}) are both set; set one of them to 0 "
                     f"(--config.train.steps=0 trains for train.epochs)")
    elif not steps and not epochs:
        found.append("train.steps and train.epochs are both 0; set one of them")
    if warmup_steps < 0:
        found.append(f"optim.warmup_steps must be >= 0; got {warmup_steps}")
    elif steps > 0 and not epochs and warmup_steps > steps:   # with epochs, checked once the steps are known
        found.append(f"optim.warmup_steps ({warmup_steps}) must be in [0, train.steps={steps}]")
    return found


def total_steps(train_cfg, warmup_steps: int, num_examples: int | None) -> int:
    """The run's optimizer steps: `train.steps`, or those of `train.epochs` over `num_examples`
    training examples (None: the split is not loaded, as when evaluating; then 0)."""
    if not train_cfg.epochs:
        return train_cfg.steps
    if num_examples is None:
        return 0
    per_epoch = num_examples // train_cfg.batch_size
    if per_epoch == 0:
        raise UserError(f"train.batch_size ({train_cfg.batch_size}) is larger than the {num_examples} training "
                        f"examples")
    steps = max(math.ceil(train_cfg.epochs * per_epoch - 1e-9), 1)  # 0.1 * 30 is 3.0000000000000004
    if warmup_steps > steps:
        raise UserError(f"optim.warmup_steps ({warmup_steps}) is more than the {steps} steps of train.epochs="
                        f"{train_cfg.epochs:g}; lower it")
    return steps


def describe(train_cfg, num_examples: int, steps: int) -> str:
    """The line a run counted in epochs prints: how its steps were derived."""
    per_epoch = num_examples // train_cfg.batch_size
    return (f"train.epochs={train_cfg.epochs:g}: {steps} steps ({per_epoch} an epoch: {num_examples} examples // "
            f"train.batch_size {train_cfg.batch_size})")
