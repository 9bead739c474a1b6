"""T5 as a Flax Linen module, layer for layer `transformers.T5ForConditionalGeneration`.

An encoder and a decoder stack of pre-norm blocks. The norm is T5's RMS LayerNorm (float32
variance, no mean, no bias); no layer has a bias; attention scores are not scaled by
1/sqrt(H) (the init of `q` carries it) and get a learned relative-position bias, one table
per stack, shared by its layers. The feed-forward is ReLU (T5) or gated tanh-GELU (T5 v1.1).
Encoder and decoder read one shared embedding; the output is that embedding applied to the
decoder output times d_model**-0.5 (tied, T5) or a separate `lm_head` (untied, T5 v1.1).

Tensor names carry their shapes: B batch, S source (encoder) length, T target (decoder)
length, D d_model, N heads, H head size, F d_ff, V vocab, K relative-position buckets,
L layers.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flax_lm.ops.attention import dot_product_attention
from flax_lm.ops.explicit_attention import heads_first
from flax_lm.models.config import ModelConfig
from flax_lm.models.layers import (
    DTYPES,
    LMHead,
    Projection,
    RMSNorm,
    dtypes,
    empty_cache,
    from_run_config,
    gelu,
    run_blocks,
    tied_logits,
    write_cache,
)
from flax_lm.models.relative_position import relative_bias

FEED_FORWARDS = ("relu", "gated-gelu")
# A stack's blocks: one stacked tree of this name with scan_layers, else "block_0", "block_1", ...
LAYERS = "block"


@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfig):
    # max_len: the longest input or target the model is used with (no absolute positions); n_layers: encoder layers
    d_ff: int = 0                # 0: 4 * d_model
    layer_norm_epsilon: float = 1e-6
    initializer_range: float = 1.0  # T5's initializer_factor: 1.0 is Hugging Face's default init
    n_decoder_layers: int = 0    # 0: n_layers
    head_dim: int = 0            # 0: d_model // n_heads (T5's d_kv)
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward: str = "relu"   # relu | gated-gelu
    tie_word_embeddings: bool = True

    def __post_init__(self):
        super().__post_init__()   # the sizes at 0 (d_ff, n_decoder_layers, head_dim) derived
        if self.feed_forward not in FEED_FORWARDS:
            raise ValueError(f"feed_forward must be one of {FEED_FORWARDS}; got {self.feed_forward!r}")

    @classmethod
    def from_config(cls, model_cfg) -> "T5Config":
        """Builds the model config from the `model` section of a run config."""
        return from_run_config(cls, model_cfg)


def unrolled(cfg: T5Config) -> T5Config:
    """The config of the unscanned twin, which decoding with a cache uses."""
    return dataclasses.replace(cfg, scan_layers=False)


def _normal(std: float):
    return nn.initializers.normal(std)


def _rms_norm(cfg: T5Config, name: str) -> RMSNorm:
    """T5LayerNorm (`layers.RMSNorm`); its scale starts at the init factor (1.0 by default), as in transformers."""
    return RMSNorm(cfg.layer_norm_epsilon, **dtypes(cfg), scale_init=nn.initializers.constant(cfg.initializer_range),
                   name=name)


class Attention(nn.Module):
    """T5Attention without its position bias (the stack owns that): q, k, v, o, no biases.

    `keys_values` and `__call__` are separate so that cross-attention keys and values can be
    computed once per source and reused at every decoding step.
    """

    cfg: T5Config

    def setup(self):
        cfg = self.cfg
        d, n, h, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.initializer_range

        def heads_in(std):
            return Projection((n, h), ("embed",), ("heads", "head_dim"), _normal(std), **dtypes(cfg))

        # HF's init: the query's std carries the 1/sqrt(H) that the scores leave out.
        self.q = heads_in(f * (d * h) ** -0.5)
        self.k = heads_in(f * d ** -0.5)
        self.v = heads_in(f * d ** -0.5)
        self.o = Projection((d,), ("heads", "head_dim"), ("embed",), _normal(f * (n * h) ** -0.5), **dtypes(cfg))

    def keys_values(self, x_BxSxD) -> dict:
        """{"k", "v"}: B x S x N x H each, in the compute dtype."""
        return {"k": self.k(x_BxSxD), "v": self.v(x_BxSxD)}

    def __call__(self, x_BxTxD, kv: dict, *, causal: bool, kv_mask_BxS=None, bias_BxNxTxS=None, query_offset=0,
                 deterministic: bool = True, kv_cache_layout: bool = False):
        """Queries from `x_BxTxD` attend to `kv` ({"k", "v"}: B x S x N x H, or (B*N) x S x H from a
        decoding cache with `kv_cache_layout`); returns B x T x D."""
        cfg = self.cfg
        dropout_rng = None
        if cfg.attention_dropout > 0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        out_BxTxNxH = dot_product_attention(
            self.q(x_BxTxD), kv["k"], kv["v"], causal=causal, kv_mask_BxS=kv_mask_BxS, query_offset=query_offset,
            implementation=cfg.attention, dropout_rate=0.0 if deterministic else cfg.attention_dropout,
            dropout_rng=dropout_rng, bias_BxNxTxS=bias_BxNxTxS, scale=1.0, kv_cache_layout=kv_cache_layout)
        out_BxTxNxH = nn.with_logical_constraint(out_BxTxNxH, ("batch", "act_length", "act_heads", None))
        return self.o(out_BxTxNxH)


class FeedForward(nn.Module):
    """T5DenseActDense (relu: wi, wo) or T5DenseGatedActDense (gated-gelu: wi_0, wi_1, wo)."""

    cfg: T5Config
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        d, ff, f = cfg.d_model, cfg.d_ff, cfg.initializer_range

        def wi(name):
            return Projection((ff,), ("embed",), ("mlp",), _normal(f * d ** -0.5), name=name, **dtypes(cfg))(x_BxTxD)

        if cfg.feed_forward == "relu":
            h_BxTxF = nn.relu(wi("wi"))
        else:  # HF maps "gated-gelu" to gelu_new, the tanh approximation
            h_BxTxF = gelu(wi("wi_0"), True) * wi("wi_1")
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "act_length", "act_mlp"))
        h_BxTxF = nn.Dropout(cfg.dropout, deterministic=self.deterministic)(h_BxTxF)
        return Projection((d,), ("mlp",), ("embed",), _normal(f * ff ** -0.5), name="wo", **dtypes(cfg))(h_BxTxF)


class Block(nn.Module):
    """T5Block: self-attention, cross-attention (decoder only) and feed-forward, each
    x + dropout(sublayer(norm(x))). Scan-compatible: (carry, bias, self mask, encoder output,
    encoder mask, cache index, layer cache, layer cross cache) -> (carry, updated layer cache)."""

    cfg: T5Config
    deterministic: bool
    is_decoder: bool

    @nn.compact
    def __call__(self, x_BxTxD, bias_BxNxTxS, kv_mask_BxS, encoded_BxSxD=None, cross_mask_BxS=None,
                 cache_index=None, layer_cache=None, layer_cross_cache=None):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        h_BxTxD = _rms_norm(cfg, name="self_attention_norm")(x_BxTxD)
        attention = Attention(cfg, name="self_attention")
        kv = attention.keys_values(h_BxTxD)
        offset = 0
        if layer_cache is not None:  # the T new keys and values go into slots cache_index..cache_index+T-1
            kv = layer_cache = write_cache(layer_cache, kv["k"], kv["v"], cache_index)
            offset = cache_index
        h_BxTxD = attention(h_BxTxD, kv, causal=self.is_decoder, kv_mask_BxS=kv_mask_BxS, bias_BxNxTxS=bias_BxNxTxS,
                            query_offset=offset, deterministic=self.deterministic,
                            kv_cache_layout=layer_cache is not None)
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "attn_out")
        if self.is_decoder:
            h_BxTxD = _rms_norm(cfg, name="cross_attention_norm")(x_BxTxD)
            cross = Attention(cfg, name="cross_attention")
            kv = layer_cross_cache if layer_cross_cache is not None else cross.keys_values(encoded_BxSxD)
            h_BxTxD = cross(h_BxTxD, kv, causal=False, kv_mask_BxS=cross_mask_BxS, deterministic=self.deterministic,
                            kv_cache_layout=layer_cross_cache is not None)
            x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "attn_out")
        h_BxTxD = FeedForward(cfg, self.deterministic, name="mlp")(_rms_norm(cfg, name="mlp_norm")(x_BxTxD))
        x_BxTxD = x_BxTxD + checkpoint_name(drop(h_BxTxD), "mlp_out")
        return nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed")), layer_cache


class CrossKeysValues(nn.Module):
    """A decoder block's cross-attention keys and values only, (B*N) x S x H as decoding caches
    keep them (`layers.write_cache`); named like the `Block` it belongs to, so it reads that block's
    parameters. Scan-compatible: (encoder output) -> (same, kv)."""

    cfg: T5Config

    @nn.compact
    def __call__(self, encoded_BxSxD):
        kv = Attention(self.cfg, name="cross_attention").keys_values(encoded_BxSxD)
        return encoded_BxSxD, jax.tree.map(heads_first, kv)


class Stack(nn.Module):
    """T5Stack after its embedding: dropout, the blocks, the final norm, dropout. The relative
    position table lives here (HF's block.0 holds it) and every block adds the same bias."""

    cfg: T5Config
    is_decoder: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS=None, *, encoded_BxSxD=None, cross_mask_BxS=None, cache=None,
                 cross_cache=None, cache_index=None, deterministic=True, cross_keys_values=False):
        """Returns (B x T x D after the final norm, the updated `cache` or None).

        With `cross_keys_values` (decoder), `x_BxTxD` is the encoder output and the call returns
        each block's cross-attention {"k", "v"} ((B*N) x S x H): a tuple of per-layer dicts,
        or one dict of L x (B*N) x S x H arrays with scan_layers.
        """
        cfg = self.cfg
        n_layers = cfg.n_decoder_layers if self.is_decoder else cfg.n_layers
        if cross_keys_values:
            return _cross_keys_values(cfg, n_layers, x_BxTxD)
        if cache is not None and cfg.scan_layers:
            raise ValueError("decoding with a cache uses the unscanned layout: apply the model of t5.unrolled(cfg) "
                             "to t5.unstack_params(params, cfg)")
        table_KxN = self.param(
            "relative_attention_bias",
            nn.with_logical_partitioning(_normal(cfg.initializer_range * cfg.d_model ** -0.5),
                                         ("relpos_buckets", "heads")),
            (cfg.relative_attention_num_buckets, cfg.n_heads), DTYPES[cfg.param_dtype])
        t = x_BxTxD.shape[1]
        s = cache[0]["k"].shape[1] if cache is not None else t
        offset = cache_index if cache is not None else 0
        bias_1xNxTxS = relative_bias(table_KxN, t, s, offset, not self.is_decoder, cfg.relative_attention_num_buckets,
                                      cfg.relative_attention_max_distance)

        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
        x_BxTxD, cache = run_blocks(Block, (cfg, deterministic, self.is_decoder), n_layers, x_BxTxD,
                                    (bias_1xNxTxS, kv_mask_BxS, encoded_BxSxD, cross_mask_BxS, cache_index), cache,
                                    scan=cfg.scan_layers, remat_policy=cfg.remat_policy, name=LAYERS,
                                    layer_inputs=(cross_cache,))
        x_BxTxD = _rms_norm(cfg, name="final_norm")(x_BxTxD)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
        return nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed")), cache


def _cross_keys_values(cfg: T5Config, n_layers: int, encoded_BxSxD):
    """Run inside `Stack.__call__`: the per-layer cross-attention keys and values."""
    if cfg.scan_layers:
        _, kv = nn.scan(CrossKeysValues, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=n_layers, metadata_params={nn.PARTITION_NAME: "layers"},
                        )(cfg, name=LAYERS)(encoded_BxSxD)
        return kv
    return tuple(CrossKeysValues(cfg, name=f"{LAYERS}_{i}")(encoded_BxSxD)[1] for i in range(n_layers))


class T5ForConditionalGeneration(nn.Module):
    """Encoder-decoder: source ids and (shifted) target ids -> target logits.

    Methods, all on one parameter tree: `__call__` (teacher forcing), `encode`, `cross_cache`
    and `decode` (teacher forcing or cached steps); `model.apply(vars, ..., method="encode")`.
    """

    cfg: T5Config

    def setup(self):
        cfg = self.cfg
        self.shared = nn.Embed(
            cfg.vocab_size, cfg.d_model,
            embedding_init=nn.with_logical_partitioning(_normal(cfg.initializer_range), ("vocab", "embed")),
            **dtypes(cfg))
        self.encoder = Stack(cfg, is_decoder=False)
        self.decoder = Stack(cfg, is_decoder=True)
        if not cfg.tie_word_embeddings:
            self.lm_head = LMHead(cfg.vocab_size, _normal(cfg.initializer_range), **dtypes(cfg))  # T5 v1.1

    def __call__(self, input_ids_BxS, decoder_input_ids_BxT, *, attention_mask_BxS=None,
                 decoder_attention_mask_BxT=None, deterministic: bool = True, return_hidden: bool = False):
        """Logits B x T x V (compute dtype). Masks are 1 for real tokens, 0 for padding; the
        decoder is causal besides. With `return_hidden`, (hidden B x T x D, output embedding
        V x D) such that logits = hidden @ embedding.T (the tied model's d_model**-0.5 is in
        hidden), for losses that fuse the output projection (`flax_lm.ops.losses`)."""
        encoded_BxSxD = self.encode(input_ids_BxS, attention_mask_BxS, deterministic)
        return self.decode(decoder_input_ids_BxT, encoded_BxSxD=encoded_BxSxD, attention_mask_BxS=attention_mask_BxS,
                           decoder_attention_mask_BxT=decoder_attention_mask_BxT, deterministic=deterministic,
                           return_hidden=return_hidden)

    def encode(self, input_ids_BxS, attention_mask_BxS=None, deterministic: bool = True):
        """The encoder output B x S x D (after its final norm)."""
        x_BxSxD = nn.with_logical_constraint(self.shared(input_ids_BxS), ("batch", "act_length", "act_embed"))
        mask_BxS = None if attention_mask_BxS is None else attention_mask_BxS.astype(bool)
        return self.encoder(x_BxSxD, mask_BxS, deterministic=deterministic)[0]

    def cross_cache(self, encoded_BxSxD):
        """Every decoder layer's cross-attention {"k", "v"} ((B*N) x S x H, compute dtype) of the
        encoder output: a tuple of per-layer dicts, or stacked L x ... with scan_layers."""
        return self.decoder(encoded_BxSxD, cross_keys_values=True)

    def decode(self, decoder_input_ids_BxT, *, encoded_BxSxD=None, attention_mask_BxS=None,
               decoder_attention_mask_BxT=None, cache=None, cross_cache=None, cache_index=None,
               deterministic: bool = True, return_hidden: bool = False, logits_to_keep: int = 0):
        """The decoder over `encoded_BxSxD` (or its `cross_cache`); `attention_mask_BxS` masks the source.

        Without `cache`: teacher forcing, returns logits B x T x V (or the `return_hidden` pair).
        With `cache` (`init_cache`, S' slots), `cross_cache` and `cache_index`: the T tokens fill
        self-attention slots cache_index..cache_index+T-1 and see the slots up to their own that
        `decoder_attention_mask_BxT` (then B x S', 1 = may attend) allows; relative positions are
        the slots' positions. Returns (logits, updated cache). `logits_to_keep` as in
        `GPT2LMHeadModel.__call__`.
        """
        if encoded_BxSxD is None and cross_cache is None:
            raise ValueError("decode needs encoded_BxSxD or cross_cache")
        x_BxTxD = nn.with_logical_constraint(self.shared(decoder_input_ids_BxT), ("batch", "act_length", "act_embed"))
        self_mask = None if decoder_attention_mask_BxT is None else decoder_attention_mask_BxT.astype(bool)
        cross_mask_BxS = None if attention_mask_BxS is None else attention_mask_BxS.astype(bool)
        x_BxTxD, cache = self.decoder(
            x_BxTxD, self_mask, encoded_BxSxD=encoded_BxSxD, cross_mask_BxS=cross_mask_BxS, cache=cache,
            cross_cache=cross_cache, cache_index=cache_index, deterministic=deterministic)
        x_BxTxD = x_BxTxD[:, -logits_to_keep:] if logits_to_keep else x_BxTxD
        out = self._output(x_BxTxD, return_hidden)
        return out if cache is None else (out, cache)

    def _output(self, x_BxTxD, return_hidden: bool):
        dtype = DTYPES[self.cfg.dtype]
        if self.cfg.tie_word_embeddings:
            # T5 rescales before the tied projection (mesh-tensorflow); v1.1's own head does not.
            x_BxTxD = x_BxTxD * jnp.asarray(self.cfg.d_model ** -0.5, x_BxTxD.dtype)
            if return_hidden:
                return x_BxTxD, self.shared.embedding.astype(dtype)
            logits_BxTxV = tied_logits(x_BxTxD, self.shared)
        else:
            out = self.lm_head(x_BxTxD, return_hidden)
            if return_hidden:
                return out
            logits_BxTxV = out
        return nn.with_logical_constraint(logits_BxTxV, ("batch", "act_length", "act_vocab"))


def init_cache(cfg: T5Config, batch: int, length: int):
    """An empty decoder self-attention cache of `length` slots in the compute dtype (a tuple of
    per-layer dicts, `layers.empty_cache`). Decoding always uses the unscanned layout (see
    `unrolled` and `unstack_params`)."""
    return empty_cache(batch, cfg.n_heads, length, cfg.head_dim, DTYPES[cfg.dtype], cfg.n_decoder_layers)


def unstack_params(params: dict, cfg: T5Config) -> dict:
    """A scanned model's (unboxed) parameters -> those of its `unrolled` twin: each stack's
    stacked "block" split into "block_0", "block_1", ... (jnp indexing: fine inside jit)."""
    params = dict(params)
    for stack, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        tree = dict(params[stack])
        stacked = tree.pop(LAYERS)
        for i in range(n_layers):
            tree[f"{LAYERS}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
        params[stack] = tree
    return params


def num_params(cfg: T5Config) -> int:
    """Parameter count: shared embedding (once), both stacks with their relative-position
    tables and norms, and the lm_head when untied."""
    d, f, inner = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.head_dim
    attention = 4 * d * inner
    ff = (3 if cfg.feed_forward == "gated-gelu" else 2) * d * f
    table = cfg.relative_attention_num_buckets * cfg.n_heads
    encoder = cfg.n_layers * (attention + ff + 2 * d) + table + d
    decoder = cfg.n_decoder_layers * (2 * attention + ff + 3 * d) + table + d
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * d
    return cfg.vocab_size * d + encoder + decoder + head


def flops_per_token(cfg: T5Config, seq_len: int) -> float:
    """Training FLOPs (fwd + bwd) per target token, for a source as long as the target (seq_len):
    6 N' + 12 (H N) seq_len (L_enc + 2 L_dec).

    N' is `num_params` without the input embedding when it is not also the output projection
    (an untied model's lookups are no matmuls); each encoder token then costs as much as a target
    token, so 6 N' counts both stacks. The attention term is PaLM's 12 L H Q T per attention
    layer: encoder self-attention, decoder self-attention (causality not discounted) and
    cross-attention.
    """
    n = num_params(cfg) - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.d_model)
    attention_layers = cfg.n_layers + 2 * cfg.n_decoder_layers
    return 6 * n + 12 * attention_layers * cfg.n_heads * cfg.head_dim * seq_len
