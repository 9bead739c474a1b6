"""Llama <-> `transformers.LlamaForCausalLM`: config and weights, pure re-layouts (Qwen3's
mapping, `interop.qwen3`, is this one with its q/k norms).

Hugging Face stores `nn.Linear` weights as (out, in); flax_lm's kernels are (in, out) with
the heads split out, so every matrix maps by a transpose and a reshape (exact both ways).
transformers 5 writes the rotary settings as `rope_parameters` ({"rope_theta", "rope_type"});
transformers 4 as `rope_theta` and `rope_scaling`: both are read. Arrays are numpy on both sides.
"""

import numpy as np

from flax_lm.errors import UserError
from flax_lm.interop import layout
from flax_lm.models.llama import LAYERS, LlamaConfig

ARCHITECTURE = "LlamaForCausalLM"
QK_NORMS = ("q_norm", "k_norm")  # Qwen3's per-head norms (`models.qwen3`), which this mapping serves too
ARCHITECTURES = {ARCHITECTURE: "causal_lm"}  # HF class -> flax_lm head


def architecture(cfg: LlamaConfig, head: str) -> str:
    return ARCHITECTURE


def config_to_hf(cfg: LlamaConfig) -> dict:
    """The `transformers.LlamaConfig` keyword arguments for a flax_lm Llama (the export adds the
    tokenizer's bos/eos ids). The rotary base is written both ways, for transformers 4 and 5."""
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_len,
        rms_norm_eps=cfg.layer_norm_epsilon, initializer_range=cfg.initializer_range,
        rope_theta=cfg.rope_theta, rope_scaling=None,
        rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default"},
        attention_bias=False, mlp_bias=False, attention_dropout=cfg.attention_dropout,
        tie_word_embeddings=cfg.tie_word_embeddings)


def _rope_theta(hf: dict, name: str = "Llama") -> float:
    """The rotary base of a config.json; any RoPE scaling (linear, dynamic, YaRN, llama3) is refused."""
    scaling = hf.get("rope_scaling")
    parameters = hf.get("rope_parameters") or {}
    rope_type = parameters.get("rope_type", "default")
    if scaling is not None or rope_type != "default":
        kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or rope_type
        raise UserError(f"{name} config.json: RoPE scaling ({kind!r}) is not supported (flax_lm needs "
                        f"rope_scaling null and rope_type 'default')")
    return float(parameters.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict) -> dict:
    """The flax_lm `model` config values for a Hugging Face Llama config.json; settings flax_lm's
    Llama does not implement are refused, naming the key. The config's bos/eos ids are not model
    settings here: generation takes the end-of-text id from the tokenizer."""
    return fields_from_hf(hf, "llama", "Llama", {
        "hidden_act": ("silu", hf.get("hidden_act", "silu")),
        "attention_bias": (False, hf.get("attention_bias", False)),
        "mlp_bias": (False, hf.get("mlp_bias", False)),
        "pretraining_tp": (1, hf.get("pretraining_tp", 1)),
    })


def fields_from_hf(hf: dict, family: str, name: str, unsupported: dict) -> dict:
    """The `model` config values of a Llama-like config.json (Llama, Qwen3) for `family`, after
    refusing each `unsupported` key whose value is not the supported one ({key: (supported, value)});
    `name` names the family in the message."""
    for key, (supported, value) in unsupported.items():
        if value != supported:
            raise UserError(f"{name} config.json: {key}={value!r} is not supported (flax_lm needs {supported!r})")
    theta = _rope_theta(hf, name)
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    return dict(
        family=family, vocab_size=hf["vocab_size"], max_len=hf.get("max_position_embeddings", 2048),
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, d_ff=hf["intermediate_size"],
        # head_dim stays 0 (d_model / n_heads) unless the checkpoint sets another size
        head_dim=0 if head_dim == hf["hidden_size"] // n_heads else head_dim,
        rope_theta=theta, layer_norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0, attention_dropout=float(hf.get("attention_dropout", 0.0)),
        initializer_range=float(hf.get("initializer_range", 0.02)))


def _layer_shapes(cfg: LlamaConfig) -> dict[str, tuple]:
    """HF name (under model.layers.i.) -> shape, for one layer (with Qwen3's q/k norms when `cfg.qk_norm`)."""
    d, f, q, kv = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
              "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
              "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
              "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f)}
    if cfg.qk_norm:
        shapes.update({f"self_attn.{name}.weight": (cfg.head_dim,) for name in QK_NORMS})
    return shapes


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple]:
    """The shape of every tensor a HF Llama state dict must hold for `cfg` (a tied model's
    lm_head.weight may be missing: it is the embedding)."""
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.d_model), "model.norm.weight": (cfg.d_model,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    for i in range(cfg.n_layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in _layer_shapes(cfg).items()})
    return shapes


def params_to_hf(params: dict, cfg: LlamaConfig, head: str = "causal_lm") -> dict[str, np.ndarray]:
    """flax_lm Llama parameters (unboxed, unscanned or scanned) -> HF state dict arrays. A tied
    model's lm_head.weight is the embedding (the export leaves it out; transformers re-ties it)."""
    d = cfg.d_model
    out = {"model.embed_tokens.weight": params["embed_tokens"]["embedding"],
           "model.norm.weight": params["norm"]["scale"]}
    for i in range(cfg.n_layers):
        layer = layout.layer(params, i, cfg.scan_layers, LAYERS, LAYERS)
        attn, mlp = layer["self_attn"], layer["mlp"]
        prefix = f"model.layers.{i}."
        out.update({
            prefix + "input_layernorm.weight": layer["input_layernorm"]["scale"],
            prefix + "post_attention_layernorm.weight": layer["post_attention_layernorm"]["scale"],
            # (D, heads, H) -> (heads * H, D)
            **{prefix + f"self_attn.{name}.weight": np.reshape(attn[name]["kernel"], (d, -1)).T
               for name in ("q_proj", "k_proj", "v_proj")},
            prefix + "self_attn.o_proj.weight": np.reshape(attn["o_proj"]["kernel"], (-1, d)).T,
            **{prefix + f"mlp.{name}.weight": np.asarray(mlp[name]["kernel"]).T
               for name in ("gate_proj", "up_proj", "down_proj")},
        })
        if cfg.qk_norm:
            out.update({prefix + f"self_attn.{name}.weight": attn[name]["scale"] for name in QK_NORMS})
    out["lm_head.weight"] = (out["model.embed_tokens.weight"] if cfg.tie_word_embeddings
                             else np.asarray(params["lm_head"]["kernel"]).T)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def params_from_hf(state_dict: dict, cfg: LlamaConfig, head: str = "causal_lm", fresh: dict | None = None) -> dict:
    """HF Llama state dict arrays -> flax_lm Llama parameters, in the scanned layout (layers
    stacked under "h") when `cfg.scan_layers`, else one "h_i" per layer. Every tensor must be
    there with its shape (`fresh` is unused: the one head is in every checkpoint)."""
    d, h = cfg.d_model, cfg.head_dim
    # Checkpoints of LlamaModel name tensors without the "model." prefix.
    sd = {k if k.startswith(("model.", "lm_head.")) else "model." + k: v for k, v in state_dict.items()}
    for name, shape in expected_shapes(cfg).items():
        if name not in sd:
            raise UserError(f"the checkpoint has no tensor {name!r}")
        if tuple(sd[name].shape) != shape:
            raise UserError(f"tensor {name!r} has shape {tuple(sd[name].shape)}, the config needs {shape}")
    sd = {k: np.asarray(v) for k, v in sd.items()}
    params = {"embed_tokens": {"embedding": sd["model.embed_tokens.weight"]},
              "norm": {"scale": sd["model.norm.weight"]}}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(sd["lm_head.weight"].T)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        heads = {"q_proj": cfg.n_heads, "k_proj": cfg.n_kv_heads, "v_proj": cfg.n_kv_heads}
        params[f"{LAYERS}_{i}"] = {
            "input_layernorm": {"scale": sd[p + "input_layernorm.weight"]},
            "post_attention_layernorm": {"scale": sd[p + "post_attention_layernorm.weight"]},
            "self_attn": {
                **{name: {"kernel": np.ascontiguousarray(sd[p + f"self_attn.{name}.weight"].T).reshape(d, n, h)}
                   for name, n in heads.items()},
                "o_proj": {"kernel": np.ascontiguousarray(sd[p + "self_attn.o_proj.weight"].T)
                           .reshape(cfg.n_heads, h, d)},
            },
            "mlp": {name: {"kernel": np.ascontiguousarray(sd[p + f"mlp.{name}.weight"].T)}
                    for name in ("gate_proj", "up_proj", "down_proj")},
        }
        if cfg.qk_norm:
            params[f"{LAYERS}_{i}"]["self_attn"].update(
                {name: {"scale": sd[p + f"self_attn.{name}.weight"]} for name in QK_NORMS})
    if cfg.scan_layers:
        params = layout.stack_layers(params, cfg.n_layers, LAYERS, LAYERS)
    return params
