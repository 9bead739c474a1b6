"""Qwen3 <-> `transformers.Qwen3ForCausalLM`: Llama's mapping (`interop.llama`) with the per-head
q/k norms, and Qwen3's config.json keys. Sliding-window layers are refused."""

from flax_lm.errors import UserError
from flax_lm.interop import llama
from flax_lm.interop.llama import expected_shapes, params_from_hf, params_to_hf  # noqa: F401 (the mapping)
from flax_lm.models.qwen3 import Qwen3Config

ARCHITECTURE = "Qwen3ForCausalLM"
ARCHITECTURES = {ARCHITECTURE: "causal_lm"}  # HF class -> flax_lm head


def architecture(cfg: Qwen3Config, head: str) -> str:
    return ARCHITECTURE


def config_to_hf(cfg: Qwen3Config) -> dict:
    """The `transformers.Qwen3Config` keyword arguments for a flax_lm Qwen3 (every layer full attention)."""
    out = {k: v for k, v in llama.config_to_hf(cfg).items() if k != "mlp_bias"}
    return {**out, "use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers,
            "layer_types": ["full_attention"] * cfg.n_layers}


def config_from_hf(hf: dict) -> dict:
    """The flax_lm `model` config values for a Qwen3 config.json; what flax_lm's Qwen3 does not
    implement (biases, sliding-window layers, RoPE scaling) is refused, naming the key."""
    layer_types = hf.get("layer_types") or []
    if any(kind != "full_attention" for kind in layer_types):
        raise UserError(f"Qwen3 config.json: layer_types {sorted(set(layer_types))} is not supported "
                        f"(flax_lm needs every layer 'full_attention')")
    return llama.fields_from_hf(hf, "qwen3", "Qwen3", {
        "hidden_act": ("silu", hf.get("hidden_act", "silu")),
        "attention_bias": (False, hf.get("attention_bias", False)),
        "use_sliding_window": (False, hf.get("use_sliding_window", False)),
    })
