"""Model families. Each module owns its module classes; `interop/` owns the HF mappings."""

from flax_lm.models import gpt2


def build_model(model_cfg):
    """The Linen module for the `model` section of a run config."""
    if model_cfg.family == "gpt2":
        return gpt2.GPT2LMHeadModel(gpt2.GPT2Config.from_config(model_cfg))
    raise ValueError(f"unknown model family {model_cfg.family!r}")
