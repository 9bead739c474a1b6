"""GPT-2 XL (1.5B parameters) at context 1024: FSDP over all devices (see
flax_lm.config.recipes.gpt2_fsdp) and full recomputation in the backward pass."""

from flax_lm.config.recipes import gpt2_fsdp


def get_config():
    return gpt2_fsdp(d_model=1600, n_layers=48, n_heads=25, remat_policy="full", learning_rate=2e-4)
