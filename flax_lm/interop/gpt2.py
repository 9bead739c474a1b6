"""GPT-2 <-> `transformers.GPT2LMHeadModel`: config and weights, pure re-layouts.

Hugging Face GPT-2 uses Conv1D layers whose weights are already (in, out), so every
tensor maps by a reshape; nothing is transposed except by reshape of fused heads.
Arrays are numpy on both sides (`state_dict` values as float numpy arrays).
"""

import numpy as np

from flax_lm.models.gpt2 import GPT2Config


def config_to_hf(cfg: GPT2Config) -> dict:
    """The `transformers.GPT2Config` keyword arguments for a flax_lm GPT-2."""
    return dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_new",
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
        layer_norm_epsilon=cfg.layer_norm_epsilon, initializer_range=cfg.initializer_range,
        tie_word_embeddings=True)


def params_to_hf(params: dict, cfg: GPT2Config) -> dict[str, np.ndarray]:
    """flax_lm GPT-2 parameters (unboxed, unscanned or scanned) -> HF state dict arrays."""
    d = cfg.d_model
    out = {
        "transformer.wte.weight": params["wte"]["embedding"],
        "transformer.wpe.weight": params["wpe"]["embedding"],
        "transformer.ln_f.weight": params["ln_f"]["scale"],
        "transformer.ln_f.bias": params["ln_f"]["bias"],
    }
    for i in range(cfg.n_layers):
        layer = _layer(params, i, cfg.scan_layers)
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


def params_from_hf(state_dict: dict, cfg: GPT2Config) -> dict:
    """HF GPT-2 state dict arrays -> flax_lm GPT-2 parameters (unscanned layout)."""
    n, h, d = cfg.n_heads, cfg.head_dim, cfg.d_model
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
    return params


def _layer(params: dict, i: int, scanned: bool) -> dict:
    if scanned:
        return _index_tree(params["h"], i)
    return params[f"h_{i}"]


def _index_tree(tree, i):
    if isinstance(tree, dict):
        return {k: _index_tree(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]
