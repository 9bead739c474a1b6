"""ModernBERT <-> `transformers` ModernBert* classes: config and weights, pure re-layouts.

PyTorch `Linear` weights are (out, in) and become (in..., out...) kernels: Wqkv (3*N*H, D) is the
(D, 3, N, H) kernel, Wi (2*F, D) the (D, 2, F) one (its halves are GeGLU's input and gate), an
attention Wo (D, N*H) the (N, H, D) one. What flax_lm's ModernBERT does not implement (biases in
the encoder, other activations, RoPE scaling, a layer pattern other than every n-th layer global)
is refused on import, naming the key. Arrays are numpy on both sides.
"""

import math

import numpy as np

from flax_lm.errors import UserError
from flax_lm.interop import layout
from flax_lm.models.modernbert import ModernBertConfig

# HF class -> flax_lm head (see flax_lm.models.modernbert.HEADS); "" is the bare encoder.
_HEAD_CLASSES = {"ModernBertModel": "", "ModernBertForMaskedLM": "masked_lm",
                 "ModernBertForSequenceClassification": "sequence_classification",
                 "ModernBertForTokenClassification": "token_classification",
                 "ModernBertForQuestionAnswering": "question_answering"}
ARCHITECTURES = dict(_HEAD_CLASSES)
PREFIX = "model."  # transformers' base_model_prefix: where a model with a head keeps the encoder


def architecture(cfg: ModernBertConfig, head: str) -> str:
    return {h: arch for arch, h in _HEAD_CLASSES.items()}[head]


def config_to_hf(cfg: ModernBertConfig) -> dict:
    """The `transformers.ModernBertConfig` keyword arguments for a flax_lm ModernBERT. The layer
    pattern and the rotary bases are written both as transformers 5 reads them (layer_types,
    rope_parameters) and as transformers 4 did (global_attn_every_n_layers, *_rope_theta)."""
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, hidden_activation="gelu",
        max_position_embeddings=cfg.max_len, initializer_range=cfg.initializer_range,
        norm_eps=cfg.layer_norm_epsilon, norm_bias=False, attention_bias=False, mlp_bias=False,
        attention_dropout=cfg.attention_dropout, embedding_dropout=cfg.dropout, mlp_dropout=cfg.dropout,
        classifier_dropout=cfg.dropout, local_attention=cfg.local_attention,
        global_attn_every_n_layers=cfg.global_attn_every_n_layers,
        layer_types=["full_attention" if cfg.is_global(i) else "sliding_attention" for i in range(cfg.n_layers)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                         "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta}},
        global_rope_theta=cfg.rope_theta, local_rope_theta=cfg.local_rope_theta,
        decoder_bias=True, classifier_pooling=cfg.classifier_pooling, classifier_bias=False,
        classifier_activation="gelu", tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id, bos_token_id=None, eos_token_id=None, cls_token_id=None, sep_token_id=None,
        num_labels=cfg.num_labels, problem_type="regression" if cfg.num_labels == 1 else "single_label_classification")


def _every_n(layer_types: list[str]) -> int:
    """The n of a layer pattern whose layers 0, n, 2n, ... are global; refused if it is not one."""
    n = next((i for i, kind in enumerate(layer_types) if i and kind == "full_attention"), len(layer_types))
    expected = ["full_attention" if i % n == 0 else "sliding_attention" for i in range(len(layer_types))]
    if layer_types != expected:
        raise UserError(f"ModernBERT config.json: layer_types {layer_types} is not supported (flax_lm needs "
                        f"layers 0, n, 2n, ... full_attention and the others sliding_attention)")
    return n


def _theta(hf: dict, layer_type: str, old_key: str, default: float) -> float:
    parameters = (hf.get("rope_parameters") or {}).get(layer_type) or {}
    if parameters.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise UserError(f"ModernBERT config.json: RoPE scaling ({parameters.get('rope_type')!r}) is not supported "
                        f"(flax_lm needs rope_type 'default')")
    return float(parameters.get("rope_theta", hf.get(old_key, default)))


def config_from_hf(hf: dict) -> dict:
    """The flax_lm `model` config values for a ModernBERT config.json; settings flax_lm's
    ModernBERT does not implement are refused, naming the key."""
    for key, supported, default in (("hidden_activation", "gelu", "gelu"), ("classifier_activation", "gelu", "gelu"),
                                    ("norm_bias", False, False), ("attention_bias", False, False),
                                    ("mlp_bias", False, False), ("classifier_bias", False, False),
                                    ("decoder_bias", True, True)):
        if hf.get(key, default) != supported:
            raise UserError(f"ModernBERT config.json: {key}={hf[key]!r} is not supported "
                            f"(flax_lm needs {supported!r})")
    n_layers = hf["num_hidden_layers"]
    every = int(hf.get("global_attn_every_n_layers", 3))
    if hf.get("layer_types"):
        every = _every_n(list(hf["layer_types"]))
    labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    pad = hf.get("pad_token_id")
    return dict(
        family="modernbert", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=n_layers,
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 8192), layer_norm_epsilon=float(hf.get("norm_eps", 1e-5)),
        dropout=float(hf.get("embedding_dropout", 0.0)), attention_dropout=float(hf.get("attention_dropout", 0.0)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        local_attention=int(hf.get("local_attention", 128)), global_attn_every_n_layers=min(every, n_layers),
        rope_theta=_theta(hf, "full_attention", "global_rope_theta", 160000.0),
        local_rope_theta=_theta(hf, "sliding_attention", "local_rope_theta", 10000.0),
        classifier_pooling=hf.get("classifier_pooling", "cls"),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        pad_token_id=0 if pad is None else int(pad),
        num_labels=1 if hf.get("problem_type") == "regression" else labels)


def _table(cfg: ModernBertConfig, head: str) -> tuple[list, list]:
    """(encoder tensors, head tensors): each (HF name, flax_lm path, flax_lm shape, n_in), n_in the
    count of a kernel's input dimensions (0: a vector copied as it is)."""
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
    enc = ("model",)
    encoder = [(PREFIX + "embeddings.tok_embeddings.weight", enc + ("tok_embeddings", "embedding"),
                (cfg.vocab_size, d), 0),
               (PREFIX + "embeddings.norm.weight", enc + ("embeddings_norm", "scale"), (d,), 0),
               (PREFIX + "final_norm.weight", enc + ("final_norm", "scale"), (d,), 0)]
    for i in range(cfg.n_layers):
        hf, fl = f"{PREFIX}layers.{i}.", enc + (f"layers_{i}",)
        if i:
            encoder.append((hf + "attn_norm.weight", fl + ("attn_norm", "scale"), (d,), 0))
        encoder += [(hf + "attn.Wqkv.weight", fl + ("attn", "Wqkv", "kernel"), (d, 3, n, h), 1),
                    (hf + "attn.Wo.weight", fl + ("attn", "Wo", "kernel"), (n, h, d), 2),
                    (hf + "mlp_norm.weight", fl + ("mlp_norm", "scale"), (d,), 0),
                    (hf + "mlp.Wi.weight", fl + ("mlp", "Wi", "kernel"), (d, 2, f), 1),
                    (hf + "mlp.Wo.weight", fl + ("mlp", "Wo", "kernel"), (f, d), 1)]
    heads = []
    if head:
        heads = [("head.dense.weight", ("head", "dense", "kernel"), (d, d), 1),
                 ("head.norm.weight", ("head", "norm", "scale"), (d,), 0)]
    if head == "masked_lm":
        heads.append(("decoder.bias", ("decoder", "bias"), (cfg.vocab_size,), 0))
        if not cfg.tie_word_embeddings:
            heads.append(("decoder.weight", ("decoder", "kernel"), (d, cfg.vocab_size), 1))
    elif head:
        c = 2 if head == "question_answering" else cfg.num_labels
        heads += [("classifier.weight", ("classifier", "kernel"), (d, c), 1),
                  ("classifier.bias", ("classifier", "bias"), (c,), 0)]
    return encoder, heads


def _hf_shape(shape: tuple, n_in: int) -> tuple:
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in])) if n_in else shape


def params_to_hf(params: dict, cfg: ModernBertConfig, head: str) -> dict[str, np.ndarray]:
    """flax_lm parameters (unboxed) of the `head` model -> HF state dict arrays (the encoder's under
    "model."). A tied decoder weight is left out: transformers ties it to the token embeddings."""
    out = {}
    encoder, heads = _table(cfg, head)
    for name, path, shape, n_in in encoder + heads:
        x = np.asarray(layout.get(params, path))
        out[name] = np.ascontiguousarray(x.reshape(math.prod(shape[:n_in]), -1).T if n_in else x)
    return out


def params_from_hf(state_dict: dict, cfg: ModernBertConfig, head: str, fresh: dict | None = None) -> dict:
    """HF state dict arrays -> flax_lm parameters of the `head` model. Checkpoints of the bare
    encoder (no "model." prefix) are accepted. Head tensors the checkpoint lacks come from `fresh`
    (a full parameter tree of the target model) when given; otherwise every tensor must be there."""
    sd = {k if k.startswith((PREFIX, "head.", "decoder.", "classifier.")) else PREFIX + k: v
          for k, v in state_dict.items()}
    encoder, heads = _table(cfg, head)
    params: dict = {}
    for name, path, shape, n_in in encoder + heads:
        if name not in sd:
            if fresh is not None and name in {t[0] for t in heads}:
                layout.put(params, path, np.asarray(layout.get(fresh, path)))
                continue
            raise UserError(f"the checkpoint has no tensor {name!r}")
        x = np.asarray(sd[name])
        if tuple(x.shape) != _hf_shape(shape, n_in):
            raise UserError(f"tensor {name!r} has shape {tuple(x.shape)}, the config needs {_hf_shape(shape, n_in)}")
        layout.put(params, path, np.ascontiguousarray(x.T).reshape(shape) if n_in else x)
    return params
