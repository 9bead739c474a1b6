"""GPT-2 <-> `transformers.GPT2LMHeadModel`: config and weights, pure re-layouts.

Hugging Face GPT-2 uses Conv1D layers whose weights are already (in, out), so every
tensor maps by a reshape; nothing is transposed except by reshape of fused heads.
Arrays are numpy on both sides (`state_dict` values as float numpy arrays).
"""

import numpy as np

from flax_lm.errors import UserError
from flax_lm.interop import layout
from flax_lm.models.gpt2 import GPT2Config

ARCHITECTURE = "GPT2LMHeadModel"
ARCHITECTURES = {ARCHITECTURE: "causal_lm"}  # HF class -> flax_lm head


def architecture(cfg: GPT2Config, head: str) -> str:
    return ARCHITECTURE


def config_to_hf(cfg: GPT2Config) -> dict:
    """The `transformers.GPT2Config` keyword arguments for a flax_lm GPT-2."""
    return dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_new",
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
        layer_norm_epsilon=cfg.layer_norm_epsilon, initializer_range=cfg.initializer_range,
        tie_word_embeddings=True)


def config_from_hf(hf: dict) -> dict:
    """The flax_lm `model` config values for a Hugging Face GPT-2 config.json; settings
    flax_lm's GPT-2 does not implement are refused, naming the key."""
    unsupported = {
        "activation_function": ("gelu_new", hf.get("activation_function", "gelu_new")),
        "scale_attn_weights": (True, hf.get("scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": (False, hf.get("scale_attn_by_inverse_layer_idx", False)),
        "tie_word_embeddings": (True, hf.get("tie_word_embeddings", True)),
    }
    for key, (supported, value) in unsupported.items():
        if value != supported:
            raise UserError(f"GPT-2 config.json: {key}={value!r} is not supported (flax_lm needs {supported!r})")
    return dict(
        family="gpt2", vocab_size=hf["vocab_size"], max_len=hf["n_positions"], d_model=hf["n_embd"],
        n_layers=hf["n_layer"], n_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        dropout=float(hf.get("resid_pdrop", 0.1)), attention_dropout=0.0,
        initializer_range=float(hf.get("initializer_range", 0.02)))


def expected_shapes(cfg: GPT2Config) -> dict[str, tuple]:
    """The shape of every tensor a HF GPT-2 state dict must hold for `cfg`."""
    d, f = cfg.d_model, cfg.d_ff
    shapes = {"transformer.wte.weight": (cfg.vocab_size, d), "transformer.wpe.weight": (cfg.max_len, d),
              "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    for i in range(cfg.n_layers):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "mlp.c_fc.weight": (d, f), p + "mlp.c_fc.bias": (f,),
            p + "mlp.c_proj.weight": (f, d), p + "mlp.c_proj.bias": (d,),
        })
    return shapes


def params_to_hf(params: dict, cfg: GPT2Config, head: str = "causal_lm") -> dict[str, np.ndarray]:
    """flax_lm GPT-2 parameters (unboxed, unscanned or scanned) -> HF state dict arrays.
    GPT-2 has one head, the tied LM head."""
    d = cfg.d_model
    out = {
        "transformer.wte.weight": params["wte"]["embedding"],
        "transformer.wpe.weight": params["wpe"]["embedding"],
        "transformer.ln_f.weight": params["ln_f"]["scale"],
        "transformer.ln_f.bias": params["ln_f"]["bias"],
    }
    for i in range(cfg.n_layers):
        layer = layout.layer(params, i, cfg.scan_layers, "h", "h")
        prefix = f"transformer.h.{i}."
        out.update({
            prefix + "ln_1.weight": layer["ln_1"]["scale"],
            prefix + "ln_1.bias": layer["ln_1"]["bias"],
            prefix + "attn.c_attn.weight": np.reshape(layer["attn"]["c_attn"]["kernel"], (d, 3 * d)),
            prefix + "attn.c_attn.bias": np.reshape(layer["attn"]["c_attn"]["bias"], (3 * d,)),
            prefix + "attn.c_proj.weight": np.reshape(layer["attn"]["c_proj"]["kernel"], (d, d)),
            prefix + "attn.c_proj.bias": layer["attn"]["c_proj"]["bias"],
            prefix + "ln_2.weight": layer["ln_2"]["scale"],
            prefix + "ln_2.bias": layer["ln_2"]["bias"],
            prefix + "mlp.c_fc.weight": layer["mlp"]["c_fc"]["kernel"],
            prefix + "mlp.c_fc.bias": layer["mlp"]["c_fc"]["bias"],
            prefix + "mlp.c_proj.weight": layer["mlp"]["c_proj"]["kernel"],
            prefix + "mlp.c_proj.bias": layer["mlp"]["c_proj"]["bias"],
        })
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return {k: np.asarray(v) for k, v in out.items()}


def params_from_hf(state_dict: dict, cfg: GPT2Config, head: str = "causal_lm", fresh: dict | None = None) -> dict:
    """HF GPT-2 state dict arrays -> flax_lm GPT-2 parameters, in the scanned layout
    (layers stacked under "h") when `cfg.scan_layers`, else one "h_i" per layer. Every tensor
    must be there (`fresh`, for heads a checkpoint may lack, is unused: GPT-2's head is tied)."""
    n, h, d = cfg.n_heads, cfg.head_dim, cfg.d_model
    # Checkpoints of GPT2Model name tensors without the "transformer." prefix.
    state_dict = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v
                  for k, v in state_dict.items()}
    for name, shape in expected_shapes(cfg).items():
        if name not in state_dict:
            raise UserError(f"the checkpoint has no tensor {name!r}")
        if tuple(state_dict[name].shape) != shape:
            raise UserError(f"tensor {name!r} has shape {tuple(state_dict[name].shape)}, the config needs {shape}")
    sd = {k.removeprefix("transformer."): np.asarray(v) for k, v in state_dict.items()}
    params = {
        "wte": {"embedding": sd["wte.weight"]},
        "wpe": {"embedding": sd["wpe.weight"]},
        "ln_f": {"scale": sd["ln_f.weight"], "bias": sd["ln_f.bias"]},
    }
    for i in range(cfg.n_layers):
        p = f"h.{i}."
        params[f"h_{i}"] = {
            "ln_1": {"scale": sd[p + "ln_1.weight"], "bias": sd[p + "ln_1.bias"]},
            "attn": {
                "c_attn": {"kernel": sd[p + "attn.c_attn.weight"].reshape(d, 3, n, h),
                           "bias": sd[p + "attn.c_attn.bias"].reshape(3, n, h)},
                "c_proj": {"kernel": sd[p + "attn.c_proj.weight"].reshape(n, h, d),
                           "bias": sd[p + "attn.c_proj.bias"]},
            },
            "ln_2": {"scale": sd[p + "ln_2.weight"], "bias": sd[p + "ln_2.bias"]},
            "mlp": {
                "c_fc": {"kernel": sd[p + "mlp.c_fc.weight"], "bias": sd[p + "mlp.c_fc.bias"]},
                "c_proj": {"kernel": sd[p + "mlp.c_proj.weight"], "bias": sd[p + "mlp.c_proj.bias"]},
            },
        }
    if cfg.scan_layers:
        params = layout.stack_layers(params, cfg.n_layers, "h", "h")
    return params
