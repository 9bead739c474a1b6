"""flax_lm: train, fine-tune, evaluate, sample from and export Transformer LMs in JAX/Flax."""

__version__ = "0.1.0"
