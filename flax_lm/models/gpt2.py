"""GPT-2 as a Flax Linen module, layer for layer `transformers.GPT2LMHeadModel`.

Pre-LayerNorm blocks, learned positions, tied input/output embeddings, tanh GELU and
residual projections initialised with std 0.02 / sqrt(2 * n_layers). Parameters carry
logical axis names (see `flax_lm.parallel.sharding`). Tensor names carry their shapes:
B batch, T length, D d_model, N heads, H head size, F d_ff, V vocab.
"""

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flax_lm.ops.attention import dot_product_attention
from flax_lm.models.layers import (
    DTYPES,
    Projection,
    dtypes,
    empty_cache,
    from_run_config,
    gelu,
    run_blocks,
    split_qkv,
    tied_logits,
    write_cache,
)

# The blocks' parameters: one stacked tree of this name with scan_layers, else "h_0", "h_1", ...
LAYERS = "h"


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    max_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "auto"

    @classmethod
    def from_config(cls, model_cfg) -> "GPT2Config":
        """Builds the model config from the `model` section of a run config."""
        return from_run_config(cls, model_cfg, d_ff=model_cfg.d_ff or 4 * model_cfg.d_model)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _normal(std: float):
    return nn.initializers.normal(std)


def _residual_std(cfg: GPT2Config) -> float:
    # GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * layers).
    return cfg.initializer_range / math.sqrt(2 * cfg.n_layers)


def _embedding_init(std: float, axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _layer_norm(cfg: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon, **dtypes(cfg),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)), name=name)


class CausalSelfAttention(nn.Module):
    cfg: GPT2Config
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, segment_ids_BxT=None, cache_index=None, layer_cache=None):
        """Returns (B x T x D, the updated `layer_cache`, or None without one).

        With `layer_cache` ({"k", "v"}: (B*N) x S x H), the T positions are cache slots
        cache_index..cache_index+T-1: their keys and values are written there and the queries
        attend to every cache slot up to their own that `kv_mask_BxS` allows.
        """
        cfg = self.cfg
        dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        # One fused projection, laid out (D, 3, N, H) so heads shard over "tensor"
        # and GPT-2's Conv1D weight (D, 3*D) maps to it by a reshape.
        qkv_BxTx3xNxH = Projection(
            (3, cfg.n_heads, cfg.head_dim), ("embed",), ("qkv", "heads", "head_dim"),
            _normal(cfg.initializer_range), bias_axes=("qkv", "heads", "head_dim"), dtype=dtype,
            param_dtype=param_dtype, name="c_attn")(x_BxTxD)
        q_BxTxNxH, k, v = split_qkv(qkv_BxTx3xNxH)  # k, v: B x S x N x H, or (B*N) x S x H from a cache
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
        out_BxTxD = Projection(
            (cfg.d_model,), ("heads", "head_dim"), ("embed",), _normal(_residual_std(cfg)), bias_axes=("embed",),
            dtype=dtype, param_dtype=param_dtype, name="c_proj")(out_BxTxNxH)
        return out_BxTxD, layer_cache


class MLP(nn.Module):
    cfg: GPT2Config

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        h_BxTxF = Projection(
            (cfg.d_ff,), ("embed",), ("mlp",), _normal(cfg.initializer_range), bias_axes=("mlp",), dtype=dtype,
            param_dtype=param_dtype, name="c_fc")(x_BxTxD)
        h_BxTxF = gelu(h_BxTxF, True)  # GPT-2's "gelu_new"
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "act_length", "act_mlp"))
        return Projection(
            (cfg.d_model,), ("mlp",), ("embed",), _normal(_residual_std(cfg)), bias_axes=("embed",), dtype=dtype,
            param_dtype=param_dtype, name="c_proj")(h_BxTxF)


class Block(nn.Module):
    """One pre-LayerNorm Transformer block; scan-compatible
    (carry, mask, segment ids, cache index, layer cache) -> (carry, updated layer cache or None)."""

    cfg: GPT2Config
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, segment_ids_BxT=None, cache_index=None, layer_cache=None):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        h_BxTxD, layer_cache = CausalSelfAttention(cfg, self.deterministic, name="attn")(
            _layer_norm(cfg, "ln_1")(x_BxTxD), kv_mask_BxS, segment_ids_BxT, cache_index, layer_cache)
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "attn_out")
        h_BxTxD = MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x_BxTxD))
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "mlp_out")
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))
        return x_BxTxD, layer_cache


class GPT2LMHeadModel(nn.Module):
    """Decoder-only language model: token ids -> next-token logits."""

    cfg: GPT2Config

    @nn.compact
    def __call__(self, input_ids_BxT, *, attention_mask_BxT=None, position_ids_BxT=None, segment_ids_BxT=None,
                 deterministic: bool = True, return_hidden: bool = False, cache=None, cache_index=None,
                 logits_to_keep: int = 0):
        """Returns logits B x T x V (compute dtype), or of the last `logits_to_keep` positions only
        (decoding's prefill needs the last one; 0 keeps all).

        `attention_mask_BxT` is 1 for real tokens and 0 for padding; `position_ids_BxT`
        defaults to 0..T-1 (left-padded batches pass their own). `segment_ids_BxT` numbers the
        documents packed into each row (with per-document `position_ids_BxT`): tokens attend
        only within their own document. With `return_hidden`,
        returns (final hidden states B x T x D, output embedding V x D) instead, for
        losses that fuse the output projection (`flax_lm.ops.losses`).

        Decoding passes `cache` (from `init_cache`, S slots) and `cache_index`: the T tokens
        fill slots cache_index..cache_index+T-1, the attention mask then covers all S slots
        (B x S), and the call returns (logits, updated cache).
        """
        cfg = self.cfg
        dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        if position_ids_BxT is None:
            start = 0 if cache is None else cache_index
            position_ids_BxT = jnp.broadcast_to(start + jnp.arange(input_ids_BxT.shape[1]), input_ids_BxT.shape)
        kv_mask_BxS = None if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
        wte = nn.Embed(
            cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
            embedding_init=_embedding_init(cfg.initializer_range, ("vocab", "embed")), name="wte")
        wpe = nn.Embed(
            cfg.max_len, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
            embedding_init=_embedding_init(cfg.initializer_range, ("positions", "embed")), name="wpe")
        x_BxTxD = wte(input_ids_BxT) + wpe(position_ids_BxT)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))

        x_BxTxD, cache = run_blocks(Block, (cfg, deterministic), cfg.n_layers, x_BxTxD,
                                    (kv_mask_BxS, segment_ids_BxT, cache_index), cache,
                                    scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name=LAYERS)

        x_BxTxD = _layer_norm(cfg, "ln_f")(x_BxTxD)
        x_BxTxD = x_BxTxD[:, -logits_to_keep:] if logits_to_keep else x_BxTxD
        if return_hidden:
            return x_BxTxD, wte.embedding.astype(dtype)
        logits_BxTxV = nn.with_logical_constraint(tied_logits(x_BxTxD, wte),
                                                  ("batch", "act_length", "act_vocab"))
        return logits_BxTxV if cache is None else (logits_BxTxV, cache)


def init_cache(cfg: GPT2Config, batch: int, length: int):
    """An empty key/value cache of `length` slots for `GPT2LMHeadModel(cfg)` in the compute
    dtype (`layers.empty_cache`: stacked with scan_layers)."""
    return empty_cache(batch, cfg.n_heads, length, cfg.head_dim, DTYPES[cfg.dtype], cfg.n_layers, cfg.scan_layers)


def num_params(cfg: GPT2Config, include_positions: bool = False) -> int:
    """Parameter count (tied head counted once); nanoGPT's N excludes positions."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    n = cfg.vocab_size * d + cfg.n_layers * per_layer + 2 * d
    return n + (cfg.max_len * d if include_positions else 0)


def flops_per_token(cfg: GPT2Config, seq_len: int) -> float:
    """Training FLOPs per token, nanoGPT/PaLM formula 6N + 12 L H Q T (fwd + bwd)."""
    return 6 * num_params(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
