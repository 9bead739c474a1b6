"""A decoder-only Transformer whose family is a set of options: GPT-2 (`models.gpt2`), the
Llama option set (`models.llama`) and Qwen3's (`models.qwen3`) are settings of `DecoderConfig`,
layer for layer their `transformers` classes.

Options: the norm (LayerNorm or RMSNorm, pre-norm either way), the positions (a learned table or
rotary on queries and keys), RMSNorm over each query and key head before the rotation (Qwen3),
the feed-forward (tanh GELU, or SwiGLU down(silu(gate(x)) * up(x))), key/value heads (grouped-query attention), biases, a tied or separate output head, and GPT-2's
residual init (projections into the residual stream with std / sqrt(2 * n_layers)). A family's
`NAMES` are its Hugging Face module names, so import and export are reshapes. Parameters carry
logical axis names (see `flax_lm.parallel.sharding`). Tensor names carry their shapes: B batch, T length,
S key/cache length, D d_model, N query heads, K key/value heads, H head size, F d_ff, V vocab.
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flax_lm.ops.attention import dot_product_attention
from flax_lm.models.config import ModelConfig
from flax_lm.models.rotary import apply_rotary, rotary_cos_sin
from flax_lm.models.layers import (
    DTYPES,
    LMHead,
    Projection,
    RMSNorm,
    dtypes,
    empty_cache,
    gelu,
    layer_norm,
    run_blocks,
    split_qkv,
    tied_logits,
    write_cache,
)

# The blocks' parameters: one stacked tree of this name with scan_layers, else "h_0", "h_1", ...
# (one name for every family, so layer-wise learning rates and the decoding loop treat all alike).
LAYERS = "h"
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary")
ACTIVATIONS = ("gelu_new", "swiglu")  # a plain feed-forward, or gated


@dataclasses.dataclass(frozen=True)
class Names:
    """A family's parameter names. One `qkv` name is a fused (D, 3, N, H) projection (no
    grouped-query attention then); three are separate q, k, v projections. `mlp_in` is one
    name, or (gate, up) for the gated feed-forward."""

    embed: str
    positions: str
    norm_1: str
    attention: str
    qkv: tuple[str, ...]
    attention_out: str
    norm_2: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    final_norm: str
    head: str = "lm_head"
    q_norm: str = "q_norm"
    k_norm: str = "k_norm"


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ModelConfig):
    norm: str = "layernorm"
    positions: str = "learned"
    activation: str = "gelu_new"
    bias: bool = True
    residual_init: bool = True    # GPT-2's std / sqrt(2 * n_layers) for projections into the residual stream
    n_kv_heads: int = 0           # 0: n_heads (multi-head attention)
    head_dim: int = 0             # 0: d_model / n_heads
    rope_theta: float = 10000.0
    qk_norm: bool = False         # Qwen3's RMSNorm over each query and key head, before the rotation
    tie_word_embeddings: bool = True
    NAMES: ClassVar[Names]

    def __post_init__(self):
        super().__post_init__()   # the sizes at 0 (n_kv_heads, head_dim) derived, so every reader sees real ones
        for option, choices in (("norm", NORMS), ("positions", POSITIONS), ("activation", ACTIVATIONS)):
            if getattr(self, option) not in choices:
                raise ValueError(f"{option} must be one of {choices}; got {getattr(self, option)!r}")


def _normal(std: float):
    return nn.initializers.normal(std)


def _residual_std(cfg: DecoderConfig) -> float:
    if cfg.residual_init:
        return cfg.initializer_range / math.sqrt(2 * cfg.n_layers)
    return cfg.initializer_range


def _norm(cfg: DecoderConfig, name: str) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.layer_norm_epsilon, **dtypes(cfg), name=name)
    return layer_norm(cfg, name)


def _dense(cfg: DecoderConfig, features: tuple, in_axes: tuple, out_axes: tuple, std: float, name: str):
    return Projection(features, in_axes, out_axes, _normal(std), bias_axes=out_axes if cfg.bias else None,
                      **dtypes(cfg), name=name)


class Attention(nn.Module):
    """Causal self-attention, fused or separate q/k/v projections, optionally rotary, grouped-query
    and with q/k norms."""

    cfg: DecoderConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, rotary, kv_mask_BxS, segment_ids_BxT=None, cache_index=None, layer_cache=None):
        """Returns (B x T x D, the updated `layer_cache`, or None without one).

        `rotary` is (cos, sin) of the T positions (B x T x H), or None. With `layer_cache`
        ({"k", "v"}: (B*K) x S x H, keys already rotated), the T positions are cache slots
        cache_index..cache_index+T-1: their keys and values are written there and the queries
        attend to every cache slot up to their own that `kv_mask_BxS` allows.
        """
        cfg, names = self.cfg, self.cfg.NAMES
        std = cfg.initializer_range
        if len(names.qkv) == 1:
            # One projection laid out (D, 3, N, H) so heads shard over "tensor"
            # and GPT-2's Conv1D weight (D, 3*D) maps to it by a reshape.
            qkv_BxTx3xNxH = _dense(cfg, (3, cfg.n_heads, cfg.head_dim), ("embed",), ("qkv", "heads", "head_dim"),
                                   std, names.qkv[0])(x_BxTxD)
            q_BxTxNxH, k, v = split_qkv(qkv_BxTx3xNxH)
        else:
            # (D, heads, H) kernels: heads shard over "tensor"; HF's (heads * H, D) maps by transpose + reshape.
            q_BxTxNxH, k, v = (
                _dense(cfg, (n_heads, cfg.head_dim), ("embed",), ("heads", "head_dim"), std, name)(x_BxTxD)
                for n_heads, name in zip((cfg.n_heads, cfg.n_kv_heads, cfg.n_kv_heads), names.qkv))
        # k, v: B x S x K x H, or (B*K) x S x H from a cache; each of the K heads serves N / K
        # consecutive query heads (repeat_kv in transformers), which attention groups without copies
        if cfg.qk_norm:  # one scale of H per projection, shared by its heads (Qwen3RMSNorm(head_dim))
            q_BxTxNxH = RMSNorm(cfg.layer_norm_epsilon, **dtypes(cfg), axis="head_dim", name=names.q_norm)(q_BxTxNxH)
            k = RMSNorm(cfg.layer_norm_epsilon, **dtypes(cfg), axis="head_dim", name=names.k_norm)(k)
        if rotary is not None:
            q_BxTxNxH, k = apply_rotary(q_BxTxNxH, *rotary), apply_rotary(k, *rotary)
        offset = 0
        if layer_cache is not None:
            layer_cache = write_cache(layer_cache, k, v, cache_index)
            k, v, offset = layer_cache["k"], layer_cache["v"], cache_index
        dropout_rng = None
        if cfg.attention_dropout > 0 and not self.deterministic:
            dropout_rng = self.make_rng("dropout")
        out_BxTxNxH = dot_product_attention(
            q_BxTxNxH, k, v, causal=True, kv_mask_BxS=kv_mask_BxS, segment_ids_BxT=segment_ids_BxT,
            query_offset=offset, kv_cache_layout=layer_cache is not None, implementation=cfg.attention,
            dropout_rate=0.0 if self.deterministic else cfg.attention_dropout, dropout_rng=dropout_rng)
        out_BxTxNxH = nn.with_logical_constraint(out_BxTxNxH, ("batch", "act_length", "act_heads", None))
        out_BxTxD = _dense(cfg, (cfg.d_model,), ("heads", "head_dim"), ("embed",), _residual_std(cfg),
                           names.attention_out)(out_BxTxNxH)
        return out_BxTxD, layer_cache


class MLP(nn.Module):
    """GPT-2's out(gelu_new(in(x))), or SwiGLU's down(silu(gate(x)) * up(x))."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg, names = self.cfg, self.cfg.NAMES
        up = [_dense(cfg, (cfg.d_ff,), ("embed",), ("mlp",), cfg.initializer_range, name)(x_BxTxD)
              for name in names.mlp_in]
        if cfg.activation == "swiglu":
            h_BxTxF = nn.silu(up[0]) * up[1]
        else:
            h_BxTxF = gelu(up[0], True)  # GPT-2's "gelu_new"
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "act_length", "act_mlp"))
        return _dense(cfg, (cfg.d_model,), ("mlp",), ("embed",), _residual_std(cfg), names.mlp_out)(h_BxTxF)


class Block(nn.Module):
    """One pre-norm decoder block; scan-compatible
    (carry, rotary, mask, segment ids, cache index, layer cache) -> (carry, updated layer cache or None)."""

    cfg: DecoderConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, rotary, kv_mask_BxS, segment_ids_BxT=None, cache_index=None, layer_cache=None):
        cfg, names = self.cfg, self.cfg.NAMES
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        h_BxTxD, layer_cache = Attention(cfg, self.deterministic, name=names.attention)(
            _norm(cfg, names.norm_1)(x_BxTxD), rotary, kv_mask_BxS, segment_ids_BxT, cache_index, layer_cache)
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "attn_out")
        h_BxTxD = MLP(cfg, name="mlp")(_norm(cfg, names.norm_2)(x_BxTxD))
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "mlp_out")
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))
        return x_BxTxD, layer_cache


class CausalLM(nn.Module):
    """Decoder-only language model: token ids -> next-token logits."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, input_ids_BxT, *, attention_mask_BxT=None, position_ids_BxT=None, segment_ids_BxT=None,
                 deterministic: bool = True, return_hidden: bool = False, cache=None, cache_index=None,
                 logits_to_keep: int = 0):
        """Returns logits B x T x V (compute dtype), or of the last `logits_to_keep` positions only
        (decoding's prefill needs the last one; 0 keeps all).

        `attention_mask_BxT` is 1 for real tokens and 0 for padding; `position_ids_BxT`
        defaults to 0..T-1 (left-padded batches pass their own). `segment_ids_BxT` numbers the
        documents packed into each row (with per-document `position_ids_BxT`): tokens attend
        only within their own document. With `return_hidden`, returns (final hidden states
        B x T x D, output embedding V x D) instead, for losses that fuse the output projection
        (`flax_lm.ops.losses`).

        Decoding passes `cache` (from `init_cache`, S slots) and `cache_index`: the T tokens
        fill slots cache_index..cache_index+T-1, the attention mask then covers all S slots
        (B x S), and the call returns (logits, updated cache).
        """
        cfg, names = self.cfg, self.cfg.NAMES
        dtype = DTYPES[cfg.dtype]
        if position_ids_BxT is None:
            start = 0 if cache is None else cache_index
            position_ids_BxT = jnp.broadcast_to(start + jnp.arange(input_ids_BxT.shape[1]), input_ids_BxT.shape)
        kv_mask_BxS = None if attention_mask_BxT is None else attention_mask_BxT.astype(bool)

        def embed(rows, axis, name):
            init = nn.with_logical_partitioning(_normal(cfg.initializer_range), (axis, "embed"))
            return nn.Embed(rows, cfg.d_model, **dtypes(cfg), embedding_init=init, name=name)

        tokens = embed(cfg.vocab_size, "vocab", names.embed)
        x_BxTxD = tokens(input_ids_BxT)
        rotary = None
        if cfg.positions == "learned":
            x_BxTxD = x_BxTxD + embed(cfg.max_len, "positions", names.positions)(position_ids_BxT)
        else:  # one (cos, sin) for every layer: it depends only on the positions
            rotary = rotary_cos_sin(position_ids_BxT, cfg.head_dim, cfg.rope_theta)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))

        x_BxTxD, cache = run_blocks(Block, (cfg, deterministic), cfg.n_layers, x_BxTxD,
                                    (rotary, kv_mask_BxS, segment_ids_BxT, cache_index), cache,
                                    scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name=LAYERS)

        x_BxTxD = _norm(cfg, names.final_norm)(x_BxTxD)
        x_BxTxD = x_BxTxD[:, -logits_to_keep:] if logits_to_keep else x_BxTxD
        if cfg.tie_word_embeddings:
            if return_hidden:
                return x_BxTxD, tokens.embedding.astype(dtype)
            logits_BxTxV = tied_logits(x_BxTxD, tokens)
        else:
            head = LMHead(cfg.vocab_size, _normal(cfg.initializer_range), **dtypes(cfg), name=names.head)
            if return_hidden:
                return head(x_BxTxD, return_hidden=True)
            logits_BxTxV = head(x_BxTxD)
        logits_BxTxV = nn.with_logical_constraint(logits_BxTxV, ("batch", "act_length", "act_vocab"))
        return logits_BxTxV if cache is None else (logits_BxTxV, cache)


def init_cache(cfg: DecoderConfig, batch: int, length: int):
    """An empty key/value cache of `length` slots for `CausalLM(cfg)` in the compute dtype
    (`layers.empty_cache`: stacked with scan_layers), of its K key/value heads, not N: the
    saving of grouped-query attention."""
    return empty_cache(batch, cfg.n_kv_heads, length, cfg.head_dim, DTYPES[cfg.dtype], cfg.n_layers,
                       cfg.scan_layers)


def num_params(cfg: DecoderConfig, include_positions: bool = False) -> int:
    """Parameter count (a tied head counted once); nanoGPT's N excludes a learned position table
    unless `include_positions`."""
    d, f, h = cfg.d_model, cfg.d_ff, cfg.head_dim
    norm = 2 * d if cfg.norm == "layernorm" else d
    attention = d * cfg.n_heads * h * 2 + d * cfg.n_kv_heads * h * 2  # q and o, k and v
    attention += 2 * h if cfg.qk_norm else 0
    mlp_in = 2 if cfg.activation == "swiglu" else 1
    mlp = (mlp_in + 1) * d * f
    biases = (cfg.n_heads + 2 * cfg.n_kv_heads) * h + d + mlp_in * f + d if cfg.bias else 0
    per_layer = 2 * norm + attention + mlp + biases
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * d
    positions = cfg.max_len * d if include_positions and cfg.positions == "learned" else 0
    return cfg.vocab_size * d + head + cfg.n_layers * per_layer + norm + positions


def flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token, nanoGPT/PaLM formula 6N' + 12 L N H T (fwd + bwd). N' leaves out
    an untied input embedding (a lookup, no matmul), as `t5.flops_per_token` does; the attention
    term counts query heads (grouped keys and values are still attended once per query head)."""
    n = num_params(cfg) - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
