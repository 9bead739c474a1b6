"""Tasks: each contributes a loss (and its metrics); the loop and step are shared."""

from flax_lm.tasks.base import LossOutput, Task
from flax_lm.tasks.causal_lm import CausalLM

TASKS = {"causal_lm": CausalLM}


def get_task(name: str) -> Task:
    return TASKS[name]()
