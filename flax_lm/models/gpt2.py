"""GPT-2 as an option set of `models.decoder`, layer for layer `transformers.GPT2LMHeadModel`.

Pre-LayerNorm blocks, learned positions, tied input/output embeddings, tanh GELU, biases, one
fused q/k/v projection, and residual projections initialised with std 0.02 / sqrt(2 * n_layers).
"""

import dataclasses

from flax_lm.models.config import ModelConfig
from flax_lm.models.decoder import LAYERS, CausalLM, DecoderConfig, Names, flops_per_token, init_cache, num_params
from flax_lm.models.layers import from_run_config

__all__ = ["LAYERS", "GPT2Config", "GPT2LMHeadModel", "flops_per_token", "init_cache", "num_params"]


@dataclasses.dataclass(frozen=True)
class GPT2Config(DecoderConfig):
    NAMES = Names(embed="wte", positions="wpe", norm_1="ln_1", attention="attn", qkv=("c_attn",),
                  attention_out="c_proj", norm_2="ln_2", mlp_in=("c_fc",), mlp_out="c_proj", final_norm="ln_f")

    @classmethod
    def from_config(cls, model_cfg) -> "GPT2Config":
        """Builds the model config from the `model` section of a run config. GPT-2's options are
        fixed: the run config's keys of the Llama options (n_kv_heads, head_dim, ...) do not apply."""
        return from_run_config(cls, model_cfg, ModelConfig)


# transformers' class name; the module is the shared decoder's
GPT2LMHeadModel = CausalLM
