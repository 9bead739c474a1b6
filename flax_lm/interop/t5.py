"""T5 <-> `transformers.T5ForConditionalGeneration`: config and weights, pure re-layouts.

One table lists every Hugging Face tensor with the flax_lm parameter it is: PyTorch
`Linear` weights are (out, in) and become (in..., out...) kernels (q, k, v: D x N x H;
o: N x H x D), everything else is copied. HF keeps the relative-position table in
block 0 of each stack; flax_lm keeps it on the stack. Arrays are numpy on both sides.

Tied vs untied: transformers 5 always ties `lm_head` to `shared` unless a checkpoint holds
a different `lm_head.weight`, and keeps the d_model**-0.5 rescale of the decoder output in
`scale_decoder_outputs`; transformers 4 used `tie_word_embeddings` for both. flax_lm's
`tie_word_embeddings` is the rescale plus the shared head (T5), or neither (T5 v1.1).
"""

import dataclasses
import math

import numpy as np

from flax_lm.errors import UserError
from flax_lm.interop import layout
from flax_lm.models.t5 import FEED_FORWARDS, LAYERS, T5Config

ARCHITECTURE = "T5ForConditionalGeneration"
ARCHITECTURES = {ARCHITECTURE: "seq2seq"}  # HF class -> flax_lm head
# HF's T5Config defaults, for keys a config.json leaves out
_HF_DEFAULTS = dict(d_kv=64, d_ff=2048, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="relu")
_REQUIRED = ("vocab_size", "d_model", "num_layers", "num_heads")


def architecture(cfg: T5Config, head: str) -> str:
    return ARCHITECTURE


def config_to_hf(cfg: T5Config) -> dict:
    """The `transformers.T5Config` keyword arguments (and config.json keys) for a flax_lm T5."""
    return dict(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
        num_layers=cfg.n_layers, num_decoder_layers=cfg.n_decoder_layers, num_heads=cfg.n_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout, layer_norm_epsilon=cfg.layer_norm_epsilon, initializer_factor=cfg.initializer_range,
        feed_forward_proj=cfg.feed_forward, n_positions=cfg.max_len,
        # transformers 4 reads tie_word_embeddings, transformers 5 scale_decoder_outputs
        tie_word_embeddings=cfg.tie_word_embeddings, scale_decoder_outputs=cfg.tie_word_embeddings,
        is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def config_from_hf(hf: dict) -> dict:
    """The flax_lm `model` config values for a T5 config.json; settings flax_lm's T5 does not
    implement are refused, naming the key."""
    for key in _REQUIRED:
        if key not in hf:
            raise UserError(f"T5 config.json has no {key!r}")
    hf = {**_HF_DEFAULTS, **hf}
    if hf["feed_forward_proj"] not in FEED_FORWARDS:
        raise UserError(f"T5 config.json: feed_forward_proj={hf['feed_forward_proj']!r} is not supported "
                        f"(flax_lm supports {', '.join(repr(f) for f in FEED_FORWARDS)})")
    if hf.get("is_encoder_decoder", True) is not True:
        raise UserError("T5 config.json: is_encoder_decoder=false is not supported (flax_lm needs true)")
    tied = hf.get("tie_word_embeddings", True) is not False
    return dict(
        family="t5", vocab_size=hf["vocab_size"], max_len=hf.get("n_positions") or 512, d_model=hf["d_model"],
        n_layers=hf["num_layers"], n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        n_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
        relative_attention_num_buckets=hf["relative_attention_num_buckets"],
        relative_attention_max_distance=hf["relative_attention_max_distance"],
        feed_forward=hf["feed_forward_proj"], tie_word_embeddings=bool(hf.get("scale_decoder_outputs", tied)),
        layer_norm_epsilon=float(hf["layer_norm_epsilon"]), dropout=float(hf["dropout_rate"]),
        attention_dropout=0.0, initializer_range=float(hf["initializer_factor"]))


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor: its flax_lm path (unscanned), flax_lm shape, and whether it is a `Linear`
    weight (HF (out, in) vs flax (in dims..., out dims...) split after `n_in` dims)."""

    hf: str
    path: tuple
    shape: tuple
    linear: bool = False
    n_in: int = 1

    @property
    def hf_shape(self) -> tuple:
        if self.linear:
            return (math.prod(self.shape[self.n_in:]), math.prod(self.shape[:self.n_in]))
        return self.shape

    def to_flax(self, x: np.ndarray) -> np.ndarray:
        return x.T.reshape(self.shape) if self.linear else x.reshape(self.shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.linear:
            return x.reshape(self.hf_shape[1], self.hf_shape[0]).T
        return x.reshape(self.hf_shape)


def _attention(hf: str, path: tuple, cfg: T5Config) -> list[_Tensor]:
    d, n, h = cfg.d_model, cfg.n_heads, cfg.head_dim
    return [*(_Tensor(f"{hf}.{name}.weight", path + (name, "kernel"), (d, n, h), True) for name in "qkv"),
            _Tensor(f"{hf}.o.weight", path + ("o", "kernel"), (n, h, d), True, n_in=2)]


def _feed_forward(hf: str, path: tuple, cfg: T5Config) -> list[_Tensor]:
    d, f = cfg.d_model, cfg.d_ff
    inputs = ("wi",) if cfg.feed_forward == "relu" else ("wi_0", "wi_1")
    return [*(_Tensor(f"{hf}.{name}.weight", path + (name, "kernel"), (d, f), True) for name in inputs),
            _Tensor(f"{hf}.wo.weight", path + ("wo", "kernel"), (f, d), True)]


def _norm(hf: str, path: tuple, cfg: T5Config) -> _Tensor:
    return _Tensor(f"{hf}.weight", path + ("scale",), (cfg.d_model,))


def _stack_table(stack: str, cfg: T5Config) -> list[_Tensor]:
    decoder = stack == "decoder"
    n_layers = cfg.n_decoder_layers if decoder else cfg.n_layers
    table = [_Tensor(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                     (stack, "relative_attention_bias"), (cfg.relative_attention_num_buckets, cfg.n_heads)),
             _norm(f"{stack}.final_layer_norm", (stack, "final_norm"), cfg)]
    for i in range(n_layers):
        hf, fl = f"{stack}.block.{i}.layer.", (stack, f"{LAYERS}_{i}")
        table += _attention(hf + "0.SelfAttention", fl + ("self_attention",), cfg)
        table.append(_norm(hf + "0.layer_norm", fl + ("self_attention_norm",), cfg))
        if decoder:
            table += _attention(hf + "1.EncDecAttention", fl + ("cross_attention",), cfg)
            table.append(_norm(hf + "1.layer_norm", fl + ("cross_attention_norm",), cfg))
        ff = "2" if decoder else "1"
        table += _feed_forward(hf + ff + ".DenseReluDense", fl + ("mlp",), cfg)
        table.append(_norm(hf + ff + ".layer_norm", fl + ("mlp_norm",), cfg))
    return table


def _table(cfg: T5Config) -> list[_Tensor]:
    table = [_Tensor("shared.weight", ("shared", "embedding"), (cfg.vocab_size, cfg.d_model))]
    table += _stack_table("encoder", cfg) + _stack_table("decoder", cfg)
    if not cfg.tie_word_embeddings:
        table.append(_Tensor("lm_head.weight", ("lm_head", "kernel"), (cfg.d_model, cfg.vocab_size), True))
    return table


def expected_shapes(cfg: T5Config) -> dict[str, tuple]:
    """The shape of every tensor a HF T5ForConditionalGeneration state dict must hold for `cfg`
    (`lm_head.weight` only when untied; the embed_tokens aliases of `shared.weight` left out)."""
    return {t.hf: t.hf_shape for t in _table(cfg)}


def params_to_hf(params: dict, cfg: T5Config, head: str = "seq2seq") -> dict[str, np.ndarray]:
    """flax_lm T5 parameters (unboxed, unscanned or scanned) -> HF state dict arrays, the tensors
    `save_pretrained` writes: `lm_head.weight` only when untied (a tied one is `shared.weight`),
    no `encoder/decoder.embed_tokens.weight` (transformers ties those to `shared`)."""
    if cfg.scan_layers:
        params = _unstack(params, cfg)
    return {t.hf: t.to_hf(np.asarray(layout.get(params, t.path))) for t in _table(cfg)}


def params_from_hf(state_dict: dict, cfg: T5Config, head: str = "seq2seq", fresh: dict | None = None) -> dict:
    """HF T5 state dict arrays -> flax_lm T5 parameters, in the scanned layout (each stack's
    layers stacked under "block") when `cfg.scan_layers`, else "block_i" per layer. Every
    tensor must be there with its shape; an untied model's missing `lm_head.weight` is
    `shared.weight`, as transformers ties it then. `fresh` is unused (T5 has one head)."""
    sd = dict(state_dict)
    if not cfg.tie_word_embeddings and "lm_head.weight" not in sd and "shared.weight" in sd:
        sd["lm_head.weight"] = sd["shared.weight"]
    params: dict = {}
    for t in _table(cfg):
        if t.hf not in sd:
            raise UserError(f"the checkpoint has no tensor {t.hf!r}")
        x = np.asarray(sd[t.hf])
        if tuple(x.shape) != t.hf_shape:
            raise UserError(f"tensor {t.hf!r} has shape {tuple(x.shape)}, the config needs {t.hf_shape}")
        layout.put(params, t.path, t.to_flax(x))
    if cfg.tie_word_embeddings and "lm_head.weight" in sd and not np.array_equal(np.asarray(sd["lm_head.weight"]),
                                                                                 np.asarray(sd["shared.weight"])):
        raise UserError("the checkpoint's lm_head.weight differs from shared.weight, but its config ties them "
                        "(scale_decoder_outputs / tie_word_embeddings); flax_lm cannot load a scaled untied head")
    if cfg.scan_layers:
        for stack, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
            params[stack] = layout.stack_layers(params[stack], n_layers, LAYERS, LAYERS)
    return params


def _unstack(params: dict, cfg: T5Config) -> dict:
    params = dict(params)
    for stack, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        params[stack] = layout.unstack_layers(params[stack], n_layers, LAYERS, LAYERS)
    return params
