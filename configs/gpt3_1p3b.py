"""GPT-3 1.3B: 24 layers, width 2048, 16 heads, 512 sequences of 2048 tokens a step; FSDP
(see flax_lm.config.recipes.gpt3). `flax-lm compile` says which TPU topologies it fits (bench/RESULTS.md)."""

from flax_lm.config.recipes import gpt3


def get_config():
    return gpt3(n_layers=24, d_model=2048, n_heads=16, batch_size=512, learning_rate=2e-4)
