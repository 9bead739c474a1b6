"""Tasks: each contributes a loss (and its metrics); the loop and step are shared."""

from flax_lm.tasks.base import LossOutput, Task
from flax_lm.tasks.causal_lm import CausalLM

__all__ = ["CausalLM", "LossOutput", "Task", "get_task"]


def get_task(cfg) -> Task:
    """The task a run config names, with its settings."""
    if cfg.task == "causal_lm":
        return CausalLM(loss_chunk_len=cfg.train.loss_chunk_len)
    raise ValueError(f"unknown task {cfg.task!r}")
