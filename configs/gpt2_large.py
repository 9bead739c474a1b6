"""GPT-2 large (774M parameters) at context 1024, for a TPU slice or several GPUs: FSDP over
all devices (see flax_lm.config.recipes.gpt2_fsdp), matmul outputs kept for the backward pass and the
rest recomputed."""

from flax_lm.config.recipes import gpt2_fsdp


def get_config():
    return gpt2_fsdp(d_model=1280, n_layers=36, n_heads=20, remat_policy="dots_no_batch", learning_rate=2.5e-4)
