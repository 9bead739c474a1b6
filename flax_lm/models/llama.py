"""A Llama-style decoder as an option set of `models.decoder`, layer for layer
`transformers.LlamaForCausalLM`.

Pre-RMSNorm blocks, rotary position embeddings on queries and keys, grouped-query attention
(`n_kv_heads` key/value heads shared by groups of query heads), a SwiGLU feed-forward
(down(silu(gate(x)) * up(x))), no biases anywhere, N(0, initializer_range) for every weight,
and an output head tied to the input embedding or separate (`tie_word_embeddings`).
"""

import dataclasses

from flax_lm.models.decoder import (
    LAYERS,
    CausalLM,
    DecoderConfig,
    Names,
    flops_per_token,
    init_cache,
    num_params,
)
from flax_lm.models.layers import from_run_config

__all__ = ["LAYERS", "LlamaConfig", "LlamaForCausalLM", "flops_per_token", "init_cache", "num_params"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
    layer_norm_epsilon: float = 1e-6
    norm: str = "rmsnorm"
    positions: str = "rotary"
    activation: str = "swiglu"
    bias: bool = False
    residual_init: bool = False
    tie_word_embeddings: bool = False
    NAMES = Names(embed="embed_tokens", positions="", norm_1="input_layernorm", attention="self_attn",
                  qkv=("q_proj", "k_proj", "v_proj"), attention_out="o_proj", norm_2="post_attention_layernorm",
                  mlp_in=("gate_proj", "up_proj"), mlp_out="down_proj", final_norm="norm")

    @classmethod
    def from_config(cls, model_cfg) -> "LlamaConfig":
        """Builds the model config from the `model` section of a run config."""
        return from_run_config(cls, model_cfg)


# transformers' class name; the module is the shared decoder's
LlamaForCausalLM = CausalLM
