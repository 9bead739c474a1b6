"""GPT-3 175B: 96 layers, width 12288, 96 heads, 1536 sequences of 2048 tokens a step; FSDP and
tensor-parallel over 8 devices (see flax_lm.config.recipes.gpt3). `flax-lm compile` says which TPU
topologies it fits (bench/RESULTS.md)."""

from flax_lm.config.recipes import gpt3


def get_config():
    return gpt3(n_layers=96, d_model=12288, n_heads=96, batch_size=1536, learning_rate=0.6e-4, tensor=8)
