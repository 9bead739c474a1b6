"""BERT / RoBERTa <-> `transformers` Bert* / Roberta* classes: config and weights, pure re-layouts.

One table lists every Hugging Face tensor with the flax_lm parameter it is and how it is
laid out: PyTorch `Linear` weights are (out, in) and become (in..., out...) kernels;
query, key and value are three HF tensors and one fused flax_lm kernel (D, 3, N, H).
Arrays are numpy on both sides.
"""

import dataclasses
import math

import numpy as np

from flax_lm.errors import UserError
from flax_lm.interop import layout
from flax_lm.models.bert import BertConfig

# HF class -> flax_lm head (see flax_lm.models.bert.HEADS); "" is the bare encoder.
_HEAD_CLASSES = {"Model": "", "ForPreTraining": "pretraining", "ForMaskedLM": "masked_lm",
                 "ForSequenceClassification": "sequence_classification",
                 "ForTokenClassification": "token_classification", "ForQuestionAnswering": "question_answering"}
ARCHITECTURES = {f"{prefix}{suffix}": head for prefix in ("Bert", "Roberta") for suffix, head in _HEAD_CLASSES.items()
                 if not (prefix == "Roberta" and head == "pretraining")}
HF_ACTIVATIONS = ("gelu",)  # exact erf GELU


def architecture(cfg: BertConfig, head: str) -> str:
    prefix = "Roberta" if cfg.variant == "roberta" else "Bert"
    return prefix + {h: suffix for suffix, h in _HEAD_CLASSES.items()}[head]


def config_to_hf(cfg: BertConfig) -> dict:
    """The `transformers.BertConfig` / `RobertaConfig` keyword arguments for a flax_lm encoder."""
    return dict(
        model_type=cfg.variant, vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
        hidden_act="gelu", hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_len + cfg.position_offset, type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_epsilon,
        pad_token_id=cfg.pad_token_id, num_labels=cfg.num_labels,
        problem_type="regression" if cfg.num_labels == 1 else "single_label_classification")


def config_from_hf(hf: dict) -> dict:
    """The flax_lm `model` config values for a BERT or RoBERTa config.json; settings flax_lm's
    encoder does not implement are refused, naming the key."""
    variant = hf.get("model_type", "bert")
    if variant not in ("bert", "roberta"):
        raise UserError(f"config.json: model_type {variant!r} is not a BERT or RoBERTa model")
    if hf.get("hidden_act", "gelu") not in HF_ACTIVATIONS:
        raise UserError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported (flax_lm needs 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"config.json: position_embedding_type={hf['position_embedding_type']!r} is not supported")
    pad = int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else (1 if variant == "roberta" else 0))
    offset = pad + 1 if variant == "roberta" else 0
    labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    return dict(
        family="bert", variant=variant, vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"] - offset, type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_epsilon=float(hf.get("layer_norm_eps", 1e-12)),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        initializer_range=float(hf.get("initializer_range", 0.02)), pad_token_id=pad,
        num_labels=1 if hf.get("problem_type") == "regression" else labels)


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor: its flax_lm path, the flax_lm shape of the piece it is, and the layout.

    kind "copy": same shape; "kernel": HF (out, in) vs flax (in dims..., out dims...) split
    after `n_in` dims; "bias": HF flat vs flax shape. `part` j: the piece is index j of
    the flax array's axis `n_in` (kernel) or 0 (bias), fused from several HF tensors.
    """

    hf: str
    path: tuple
    shape: tuple
    kind: str
    n_in: int = 1
    part: int | None = None

    @property
    def hf_shape(self) -> tuple:
        if self.kind == "kernel":
            return (math.prod(self.shape[self.n_in:]), math.prod(self.shape[:self.n_in]))
        if self.kind == "bias":
            return (math.prod(self.shape),)
        return self.shape

    @property
    def part_axis(self) -> int:
        return self.n_in if self.kind == "kernel" else 0


def _linear(hf: str, path: tuple, d_in: tuple, d_out: tuple, part: int | None = None) -> list[_Tensor]:
    return [_Tensor(f"{hf}.weight", path + ("kernel",), d_in + d_out, "kernel", len(d_in), part),
            _Tensor(f"{hf}.bias", path + ("bias",), d_out, "bias", part=part)]


def _norm(hf: str, path: tuple, d: int) -> list[_Tensor]:
    return [_Tensor(f"{hf}.weight", path + ("scale",), (d,), "copy"),
            _Tensor(f"{hf}.bias", path + ("bias",), (d,), "copy")]


def _encoder_table(cfg: BertConfig, pooler: bool) -> list[_Tensor]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
    p = cfg.variant + "."
    emb = ("bert", "embeddings")
    table = [
        _Tensor(p + "embeddings.word_embeddings.weight", emb + ("word_embeddings", "embedding"),
                (cfg.vocab_size, d), "copy"),
        _Tensor(p + "embeddings.position_embeddings.weight", emb + ("position_embeddings", "embedding"),
                (cfg.max_len + cfg.position_offset, d), "copy"),
        _Tensor(p + "embeddings.token_type_embeddings.weight", emb + ("token_type_embeddings", "embedding"),
                (cfg.type_vocab_size, d), "copy"),
        *_norm(p + "embeddings.LayerNorm", emb + ("LayerNorm",), d),
    ]
    for i in range(cfg.n_layers):
        hf, fl = f"{p}encoder.layer.{i}.", ("bert", f"layer_{i}")
        for j, name in enumerate(("query", "key", "value")):
            table += _linear(hf + f"attention.self.{name}", fl + ("attention", "qkv"), (d,), (n, h), part=j)
        table += _linear(hf + "attention.output.dense", fl + ("attention", "out"), (n, h), (d,))
        table += _norm(hf + "attention.output.LayerNorm", fl + ("attention_ln",), d)
        table += _linear(hf + "intermediate.dense", fl + ("intermediate",), (d,), (f,))
        table += _linear(hf + "output.dense", fl + ("output",), (f,), (d,))
        table += _norm(hf + "output.LayerNorm", fl + ("output_ln",), d)
    if pooler:
        table += _linear(p + "pooler.dense", ("bert", "pooler"), (d,), (d,))
    return table


def _mlm_table(cfg: BertConfig) -> list[_Tensor]:
    d = cfg.d_model
    if cfg.variant == "roberta":
        dense, norm, bias = "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"
    else:
        dense, norm, bias = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                             "cls.predictions.bias")
    return [*_linear(dense, ("mlm", "transform"), (d,), (d,)), *_norm(norm, ("mlm", "transform_ln"), d),
            _Tensor(bias, ("mlm", "bias"), (cfg.vocab_size,), "copy")]


def _table(cfg: BertConfig, head: str) -> tuple[list[_Tensor], list[_Tensor]]:
    """(encoder tensors, head tensors) of the HF class for `head`."""
    d, c = cfg.d_model, cfg.num_labels
    roberta = cfg.variant == "roberta"
    pooler = head in ("", "pretraining") or (head == "sequence_classification" and not roberta)
    if head == "pretraining":
        heads = _mlm_table(cfg) + _linear("cls.seq_relationship", ("nsp",), (d,), (2,))
    elif head == "masked_lm":
        heads = _mlm_table(cfg)
    elif head == "sequence_classification" and roberta:
        heads = (_linear("classifier.dense", ("classifier_dense",), (d,), (d,))
                 + _linear("classifier.out_proj", ("classifier",), (d,), (c,)))
    elif head in ("sequence_classification", "token_classification"):
        heads = _linear("classifier", ("classifier",), (d,), (c,))
    elif head == "question_answering":
        heads = _linear("qa_outputs", ("qa_outputs",), (d,), (2,))
    else:
        heads = []
    return _encoder_table(cfg, pooler), heads


def params_to_hf(params: dict, cfg: BertConfig, head: str) -> dict[str, np.ndarray]:
    """flax_lm parameters (unboxed, unscanned or scanned) of the `head` model -> HF state dict arrays.
    The tied MLM decoder weight is left out: transformers ties it to the word embeddings."""
    if cfg.scan_layers:
        params = {**params, "bert": _unstack(params["bert"], cfg.n_layers)}
    out = {}
    encoder, heads = _table(cfg, head)
    for t in encoder + heads:
        x = np.asarray(layout.get(params, t.path))
        if t.part is not None:
            x = np.take(x, t.part, axis=t.part_axis)
        if t.kind == "kernel":
            x = x.reshape(t.hf_shape[1], t.hf_shape[0]).T
        out[t.hf] = x.reshape(t.hf_shape)
    return out


def params_from_hf(state_dict: dict, cfg: BertConfig, head: str, fresh: dict | None = None) -> dict:
    """HF state dict arrays -> flax_lm parameters of the `head` model, in the scanned layout when
    `cfg.scan_layers`. Checkpoints of the bare encoder (no `bert.` prefix) are accepted.

    Head tensors the checkpoint lacks come from `fresh` (a full parameter tree of the target
    model, e.g. newly initialised) when given; otherwise every tensor must be there.
    """
    prefix = cfg.variant + "."
    bare = ("embeddings.", "encoder.", "pooler.")
    sd = {prefix + k if k.startswith(bare) else k: v for k, v in state_dict.items()}
    encoder, heads = _table(cfg, head)
    if fresh is not None and cfg.scan_layers and "layers" in fresh.get("bert", {}):
        fresh = {**fresh, "bert": _unstack(fresh["bert"], cfg.n_layers)}
    pieces: dict[tuple, dict] = {}
    params: dict = {}
    for t in encoder + heads:
        if t.hf not in sd:
            if fresh is not None and (t in heads or t.hf.startswith(prefix + "pooler.")):
                layout.put(params, t.path, np.asarray(layout.get(fresh, t.path)))
                continue
            raise UserError(f"the checkpoint has no tensor {t.hf!r}")
        x = np.asarray(sd[t.hf])
        if tuple(x.shape) != t.hf_shape:
            raise UserError(f"tensor {t.hf!r} has shape {tuple(x.shape)}, the config needs {t.hf_shape}")
        x = x.T.reshape(t.shape) if t.kind == "kernel" else x.reshape(t.shape)
        if t.part is None:
            layout.put(params, t.path, x)
        else:
            pieces.setdefault(t.path, {})[t.part] = (x, t.part_axis)
    for path, parts in pieces.items():
        axis = parts[0][1]
        layout.put(params, path, np.stack([parts[j][0] for j in sorted(parts)], axis=axis))
    if cfg.scan_layers:
        params["bert"] = layout.stack_layers(params["bert"], cfg.n_layers, "layer", "layers")
    return params


def _unstack(encoder: dict, n_layers: int) -> dict:
    return layout.unstack_layers(encoder, n_layers, "layer", "layers")
