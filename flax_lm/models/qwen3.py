"""Qwen3 as an option set of `models.decoder`, layer for layer `transformers.Qwen3ForCausalLM`.

The Llama option set (pre-RMSNorm, rotary positions, grouped-query attention, SwiGLU, no biases)
plus an RMSNorm over each query and key head before the rotation (`q_norm`, `k_norm`: one scale of
head_dim each, shared by the heads). Qwen3 checkpoints often set head_dim apart from
d_model / n_heads (`model.head_dim`).
"""

import dataclasses

from flax_lm.models.decoder import LAYERS, CausalLM, flops_per_token, init_cache, num_params
from flax_lm.models.llama import LlamaConfig

__all__ = ["LAYERS", "Qwen3Config", "Qwen3ForCausalLM", "flops_per_token", "init_cache", "num_params"]


@dataclasses.dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    qk_norm: bool = True  # from_config is Llama's: the family, not a config key, turns this on


# transformers' class name; the module is the shared decoder's
Qwen3ForCausalLM = CausalLM
