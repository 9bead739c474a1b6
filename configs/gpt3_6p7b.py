"""GPT-3 6.7B: 32 layers, width 4096, 32 heads, 1024 sequences of 2048 tokens a step; FSDP
(see flax_lm.config.recipes.gpt3). `flax-lm compile` says which TPU topologies it fits (bench/RESULTS.md)."""

from flax_lm.config.recipes import gpt3


def get_config():
    return gpt3(n_layers=32, d_model=4096, n_heads=32, batch_size=1024, learning_rate=1.2e-4)
