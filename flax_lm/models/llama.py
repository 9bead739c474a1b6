"""A Llama-style decoder as a Flax Linen module, layer for layer `transformers.LlamaForCausalLM`.

Pre-RMSNorm blocks, rotary position embeddings on queries and keys, grouped-query attention
(`n_kv_heads` key/value heads shared by groups of query heads), a SwiGLU feed-forward
(down(silu(gate(x)) * up(x))), no biases anywhere, and an output head tied to the input
embedding or separate (`tie_word_embeddings`). Parameters carry logical axis names (see
`flax_lm.parallel.sharding`) and are named as the Hugging Face modules are, so import and export are
reshapes. Tensor names carry their shapes: B batch, T length, S key/cache length, D d_model,
N query heads, K key/value heads, H head size, F d_ff, V vocab.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flax_lm.ops.attention import dot_product_attention
from flax_lm.models.layers import (
    DTYPES,
    LMHead,
    Projection,
    RMSNorm,
    dtypes,
    empty_cache,
    from_run_config,
    run_blocks,
    tied_logits,
    write_cache,
)

# The blocks' parameters: one stacked tree of this name with scan_layers, else "h_0", "h_1", ...
# (GPT-2's name, so layer-wise learning rates and the decoding loop treat both alike).
LAYERS = "h"


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    max_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int = 0           # 0: n_heads (multi-head attention)
    head_dim: int = 0             # 0: d_model / n_heads
    rope_theta: float = 10000.0
    layer_norm_epsilon: float = 1e-6
    dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        # Resolve the "0 means default" sizes once, so every user of the config sees real numbers.
        object.__setattr__(self, "n_kv_heads", self.n_kv_heads or self.n_heads)
        object.__setattr__(self, "head_dim", self.head_dim or self.d_model // self.n_heads)

    @classmethod
    def from_config(cls, model_cfg) -> "LlamaConfig":
        """Builds the model config from the `model` section of a run config."""
        return from_run_config(cls, model_cfg, d_ff=model_cfg.d_ff or 4 * model_cfg.d_model)


def _normal(cfg: LlamaConfig):
    # Llama initialises every linear layer and the embedding with N(0, initializer_range).
    return nn.initializers.normal(cfg.initializer_range)


def _rms_norm(cfg: LlamaConfig, name: str) -> RMSNorm:
    return RMSNorm(cfg.layer_norm_epsilon, **dtypes(cfg), name=name)


def rotary_cos_sin(position_ids_BxT, head_dim: int, theta: float):
    """(cos, sin), each B x T x H in float32: the angle of position p in frequency pair i is
    p * theta^(-2i/H), repeated over both halves of the head as transformers' LlamaRotaryEmbedding."""
    inv_freq_Hh = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BxTxHh = position_ids_BxT.astype(jnp.float32)[..., None] * inv_freq_Hh
    angles_BxTxH = jnp.concatenate([angles_BxTxHh, angles_BxTxHh], axis=-1)
    return jnp.cos(angles_BxTxH), jnp.sin(angles_BxTxH)


def apply_rotary(x_BxTxNxH, cos_BxTxH, sin_BxTxH):
    """x * cos + rotate_half(x) * sin in x's dtype, rotate_half(x) = (-x2, x1) over the halves
    of the head (transformers' convention, not the interleaved pairs of the original RoPE)."""
    dtype = x_BxTxNxH.dtype
    cos_BxTx1xH, sin_BxTx1xH = cos_BxTxH[:, :, None].astype(dtype), sin_BxTxH[:, :, None].astype(dtype)
    x1, x2 = jnp.split(x_BxTxNxH, 2, axis=-1)
    return x_BxTxNxH * cos_BxTx1xH + jnp.concatenate([-x2, x1], axis=-1) * sin_BxTx1xH


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions: q_proj, k_proj, v_proj, o_proj, no biases."""

    cfg: LlamaConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, rotary, kv_mask_BxS, segment_ids_BxT=None, cache_index=None, layer_cache=None):
        """Returns (B x T x D, the updated `layer_cache`, or None without one).

        `rotary` is (cos, sin) of the T positions (B x T x H). With `layer_cache` ({"k", "v"}:
        (B*K) x S x H, keys already rotated), the T positions are cache slots
        cache_index..cache_index+T-1, as in `gpt2.CausalSelfAttention`.
        """
        cfg = self.cfg

        def project(n_heads, name):
            # (D, heads, H) kernels: heads shard over "tensor"; HF's (heads * H, D) maps by transpose + reshape.
            return Projection((n_heads, cfg.head_dim), ("embed",), ("heads", "head_dim"), _normal(cfg), **dtypes(cfg),
                              name=name)(x_BxTxD)

        q_BxTxNxH = apply_rotary(project(cfg.n_heads, "q_proj"), *rotary)
        # k, v: B x S x K x H, or (B*K) x S x H from a cache; each of the K heads serves N / K
        # consecutive query heads (repeat_kv in transformers), which attention groups without copies
        k = apply_rotary(project(cfg.n_kv_heads, "k_proj"), *rotary)
        v = project(cfg.n_kv_heads, "v_proj")
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
        out_BxTxD = Projection((cfg.d_model,), ("heads", "head_dim"), ("embed",), _normal(cfg), **dtypes(cfg),
                               name="o_proj")(out_BxTxNxH)
        return out_BxTxD, layer_cache


class MLP(nn.Module):
    """SwiGLU feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg

        def up(name):
            return Projection((cfg.d_ff,), ("embed",), ("mlp",), _normal(cfg), **dtypes(cfg), name=name)(x_BxTxD)

        h_BxTxF = nn.silu(up("gate_proj")) * up("up_proj")
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "act_length", "act_mlp"))
        return Projection((cfg.d_model,), ("mlp",), ("embed",), _normal(cfg), **dtypes(cfg),
                          name="down_proj")(h_BxTxF)


class Block(nn.Module):
    """One pre-RMSNorm decoder layer (LlamaDecoderLayer); scan-compatible
    (carry, rotary, mask, segment ids, cache index, layer cache) -> (carry, updated layer cache or None)."""

    cfg: LlamaConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, rotary, kv_mask_BxS, segment_ids_BxT=None, cache_index=None, layer_cache=None):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        h_BxTxD, layer_cache = Attention(cfg, self.deterministic, name="self_attn")(
            _rms_norm(cfg, "input_layernorm")(x_BxTxD), rotary, kv_mask_BxS, segment_ids_BxT, cache_index,
            layer_cache)
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "attn_out")
        h_BxTxD = MLP(cfg, name="mlp")(_rms_norm(cfg, "post_attention_layernorm")(x_BxTxD))
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "mlp_out")
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))
        return x_BxTxD, layer_cache


class LlamaForCausalLM(nn.Module):
    """Decoder-only language model: token ids -> next-token logits. The interface is
    `gpt2.GPT2LMHeadModel`'s, so tasks, the train step and the decoding loops use either."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, input_ids_BxT, *, attention_mask_BxT=None, position_ids_BxT=None, segment_ids_BxT=None,
                 deterministic: bool = True, return_hidden: bool = False, cache=None, cache_index=None,
                 logits_to_keep: int = 0):
        """Returns logits B x T x V (compute dtype), or (logits, updated cache) with `cache`, or
        with `return_hidden` (final hidden states B x T x D, output embedding V x D).

        Arguments as `GPT2LMHeadModel.__call__`, `logits_to_keep` too: `attention_mask_BxT` 1 for real tokens (B x S
        when decoding with `cache`), `position_ids_BxT` default 0..T-1 (from `cache_index` when
        decoding) and rotate queries and keys, `segment_ids_BxT` keeps packed documents apart.
        """
        cfg = self.cfg
        dtype = DTYPES[cfg.dtype]
        if position_ids_BxT is None:
            start = 0 if cache is None else cache_index
            position_ids_BxT = jnp.broadcast_to(start + jnp.arange(input_ids_BxT.shape[1]), input_ids_BxT.shape)
        kv_mask_BxS = None if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
        embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.d_model, **dtypes(cfg),
            embedding_init=nn.with_logical_partitioning(_normal(cfg), ("vocab", "embed")), name="embed_tokens")
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(embed_tokens(input_ids_BxT))
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))
        # One (cos, sin) for every layer: it depends only on the positions.
        rotary = rotary_cos_sin(position_ids_BxT, cfg.head_dim, cfg.rope_theta)
        x_BxTxD, cache = run_blocks(Block, (cfg, deterministic), cfg.n_layers, x_BxTxD,
                                    (rotary, kv_mask_BxS, segment_ids_BxT, cache_index), cache,
                                    scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name=LAYERS)
        x_BxTxD = _rms_norm(cfg, "norm")(x_BxTxD)
        x_BxTxD = x_BxTxD[:, -logits_to_keep:] if logits_to_keep else x_BxTxD
        if cfg.tie_word_embeddings:
            if return_hidden:
                return x_BxTxD, embed_tokens.embedding.astype(dtype)
            logits_BxTxV = tied_logits(x_BxTxD, embed_tokens)
        else:
            head = LMHead(cfg.vocab_size, _normal(cfg), **dtypes(cfg), name="lm_head")
            if return_hidden:
                return head(x_BxTxD, return_hidden=True)
            logits_BxTxV = head(x_BxTxD)
        logits_BxTxV = nn.with_logical_constraint(logits_BxTxV, ("batch", "act_length", "act_vocab"))
        return logits_BxTxV if cache is None else (logits_BxTxV, cache)


def init_cache(cfg: LlamaConfig, batch: int, length: int):
    """An empty key/value cache of `length` slots for `LlamaForCausalLM(cfg)` in the compute
    dtype (`layers.empty_cache`: stacked with scan_layers), of its K key/value heads, not N:
    the saving of grouped-query attention."""
    return empty_cache(batch, cfg.n_kv_heads, length, cfg.head_dim, DTYPES[cfg.dtype], cfg.n_layers,
                       cfg.scan_layers)


def num_params(cfg: LlamaConfig, include_positions: bool = False) -> int:
    """Parameter count (a tied head counted once). Llama has no position table, so
    `include_positions` changes nothing; it is there for `gpt2.num_params`'s callers."""
    d, f, h = cfg.d_model, cfg.d_ff, cfg.head_dim
    attention = d * cfg.n_heads * h * 2 + d * cfg.n_kv_heads * h * 2  # q and o, k and v
    per_layer = 2 * d + attention + 3 * d * f
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * d
    return cfg.vocab_size * d + head + cfg.n_layers * per_layer + d


def flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token, nanoGPT/PaLM formula 6N' + 12 L N H T (fwd + bwd). N' leaves out
    an untied input embedding (a lookup, no matmul), as `t5.flops_per_token` does; the attention
    term counts query heads (grouped keys and values are still attended once per query head)."""
    n = num_params(cfg) - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
