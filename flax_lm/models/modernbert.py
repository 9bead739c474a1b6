"""ModernBERT as Flax Linen modules, layer for layer `transformers.ModernBertModel` (its padded
sdpa/eager path), with the heads of `ModernBertForMaskedLM`, `...ForSequenceClassification`,
`...ForTokenClassification` and `...ForQuestionAnswering`.

Token embeddings and a LayerNorm (no positions: rotary on queries and keys), pre-norm blocks
(the first block's attention norm is the identity: the embedding norm precedes it), one fused
Wqkv, alternating attention: every `global_attn_every_n_layers`-th layer (0, n, 2n, ...) attends
globally with rotary base `rope_theta`, the others attend within |query - key| <= local_attention / 2
with base `local_rope_theta`; a GeGLU feed-forward Wo(gelu(input) * gate) of Wi's two halves, a
final norm, and no biases in the encoder (no norm, attention or MLP biases). Parameter names are
the Hugging Face module names, so import and export are reshapes. Tensor names carry their shapes:
B batch, T length, P masked positions, D d_model, N heads, H head size, F d_ff, V vocab, C labels.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flax_lm.models.config import ModelConfig
from flax_lm.models.rotary import apply_rotary, rotary_cos_sin
from flax_lm.models.layers import DTYPES, Projection, contract, dtypes, from_run_config, gelu, split_qkv, tied_logits
from flax_lm.models.remat import POLICIES
from flax_lm.ops.attention import dot_product_attention

POOLINGS = ("cls", "mean")
# Added to the scores of keys outside a local layer's window. Finite, so no row turns NaN; the
# diagonal is always inside the window, so no row is all masked by it.
OUTSIDE_WINDOW = -1e30


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(ModelConfig):
    dropout: float = 0.0          # embedding, MLP and classifier dropout
    local_attention: int = 128    # the local layers' window: a query sees keys within half of it either side
    global_attn_every_n_layers: int = 3
    rope_theta: float = 160000.0  # the global layers' rotary base
    local_rope_theta: float = 10000.0
    classifier_pooling: str = "cls"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    num_labels: int = 2

    @classmethod
    def from_config(cls, model_cfg) -> "ModernBertConfig":
        """Builds the model config from the `model` section of a run config."""
        return from_run_config(cls, model_cfg, num_labels=model_cfg.num_labels or 2)

    def __post_init__(self):
        super().__post_init__()
        if self.classifier_pooling not in POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {POOLINGS}; got {self.classifier_pooling!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def is_global(self, layer: int) -> bool:
        """Whether layer `layer` attends to every position (else within the local window)."""
        return layer % self.global_attn_every_n_layers == 0


def _trunc_normal(std: float):
    # transformers' trunc_normal_(std, a=-2 std, b=2 std) (initializer_cutoff_factor 2)
    return nn.initializers.truncated_normal(std, lower=-2.0, upper=2.0)


def _out_std(cfg: ModernBertConfig) -> float:
    """transformers' std of projections into the residual stream and of the heads' dense layers."""
    return cfg.initializer_range / (2.0 * cfg.n_layers) ** 0.5


def _dense(cfg, features, in_axes, out_axes, std, name, bias=False) -> Projection:
    return Projection(features, in_axes, out_axes, _trunc_normal(std), bias_axes=out_axes if bias else None,
                      name=name, **dtypes(cfg))


def _norm(cfg: ModernBertConfig, name: str) -> nn.LayerNorm:
    """LayerNorm without a bias (norm_bias=False)."""
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, use_bias=False, **dtypes(cfg),
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)), name=name)


def window_bias_1x1xTxT(length: int, local_attention: int):
    """0 where |query - key| <= local_attention // 2, OUTSIDE_WINDOW elsewhere (float32)."""
    distance_TxT = jnp.abs(jnp.arange(length)[:, None] - jnp.arange(length)[None, :])
    return jnp.where(distance_TxT <= local_attention // 2, 0.0, OUTSIDE_WINDOW).astype(jnp.float32)[None, None]


class Attention(nn.Module):
    cfg: ModernBertConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, rotary, kv_mask_BxT, window_bias):
        """Self-attention of B x T x D; `rotary` (cos, sin) B x T x H; `window_bias` 1 x 1 x T x T or None."""
        cfg = self.cfg
        qkv_BxTx3xNxH = _dense(cfg, (3, cfg.n_heads, cfg.head_dim), ("embed",), ("qkv", "heads", "head_dim"),
                               cfg.initializer_range, "Wqkv")(x_BxTxD)
        q_BxTxNxH, k_BxTxNxH, v_BxTxNxH = split_qkv(qkv_BxTx3xNxH)
        q_BxTxNxH, k_BxTxNxH = apply_rotary(q_BxTxNxH, *rotary), apply_rotary(k_BxTxNxH, *rotary)
        dropout_rng = None
        if cfg.attention_dropout > 0 and not self.deterministic:
            dropout_rng = self.make_rng("dropout")
        out_BxTxNxH = dot_product_attention(
            q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, causal=False, kv_mask_BxS=kv_mask_BxT, bias_BxNxTxS=window_bias,
            implementation=cfg.attention, dropout_rate=0.0 if self.deterministic else cfg.attention_dropout,
            dropout_rng=dropout_rng)
        out_BxTxNxH = nn.with_logical_constraint(out_BxTxNxH, ("batch", "act_length", "act_heads", None))
        out_BxTxD = _dense(cfg, (cfg.d_model,), ("heads", "head_dim"), ("embed",), _out_std(cfg), "Wo")(out_BxTxNxH)
        return nn.Dropout(cfg.attention_dropout, deterministic=self.deterministic)(out_BxTxD)


class MLP(nn.Module):
    """GeGLU: Wo(gelu(input) * gate), input and gate the two halves of Wi (D x 2 x F)."""

    cfg: ModernBertConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        h_BxTx2xF = _dense(cfg, (2, cfg.d_ff), ("embed",), (None, "mlp"), cfg.initializer_range, "Wi")(x_BxTxD)
        h_BxTxF = gelu(h_BxTx2xF[..., 0, :], False) * h_BxTx2xF[..., 1, :]
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "act_length", "act_mlp"))
        h_BxTxF = nn.Dropout(cfg.dropout, deterministic=self.deterministic)(h_BxTxF)
        return _dense(cfg, (cfg.d_model,), ("mlp",), ("embed",), _out_std(cfg), "Wo")(h_BxTxF)


class Layer(nn.Module):
    """One pre-norm block; layer 0 has no attention norm (`attn_norm` is the identity there)."""

    cfg: ModernBertConfig
    deterministic: bool
    first: bool

    @nn.compact
    def __call__(self, x_BxTxD, rotary, kv_mask_BxT, window_bias):
        cfg = self.cfg
        h_BxTxD = x_BxTxD if self.first else _norm(cfg, "attn_norm")(x_BxTxD)
        h_BxTxD = Attention(cfg, self.deterministic, name="attn")(h_BxTxD, rotary, kv_mask_BxT, window_bias)
        x_BxTxD = x_BxTxD + checkpoint_name(h_BxTxD, "attn_out")
        h_BxTxD = MLP(cfg, self.deterministic, name="mlp")(_norm(cfg, "mlp_norm")(x_BxTxD))
        x_BxTxD = x_BxTxD + checkpoint_name(h_BxTxD, "mlp_out")
        return nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))


class Encoder(nn.Module):
    """`ModernBertModel`: embeddings, the layers and the final norm."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, attention_mask_BxT=None, *, deterministic=True):
        """Returns (final hidden states B x T x D, the token-embedding module). Positions are 0..T-1."""
        cfg = self.cfg
        t = input_ids_BxT.shape[1]
        kv_mask_BxT = None if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
        init = nn.with_logical_partitioning(_trunc_normal(cfg.initializer_range), ("vocab", "embed"))
        tokens = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, name="tok_embeddings", **dtypes(cfg))
        x_BxTxD = _norm(cfg, "embeddings_norm")(tokens(input_ids_BxT))
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed"))
        position_ids_BxT = jnp.broadcast_to(jnp.arange(t), input_ids_BxT.shape)
        rotary = {True: rotary_cos_sin(position_ids_BxT, cfg.head_dim, cfg.rope_theta),
                  False: rotary_cos_sin(position_ids_BxT, cfg.head_dim, cfg.local_rope_theta)}
        # a window that covers the whole sequence masks nothing: no bias then
        local_bias = window_bias_1x1xTxT(t, cfg.local_attention) if t - 1 > cfg.local_attention // 2 else None
        layer = Layer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=POLICIES[cfg.remat_policy])
        for i in range(cfg.n_layers):
            is_global = cfg.is_global(i)
            x_BxTxD = layer(cfg, deterministic, i == 0, name=f"layers_{i}")(
                x_BxTxD, rotary[is_global], kv_mask_BxT, None if is_global else local_bias)
        return _norm(cfg, "final_norm")(x_BxTxD), tokens


class PredictionHead(nn.Module):
    """`ModernBertPredictionHead`: norm(gelu(dense(x))), dense without a bias."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, x_BxXxD):
        cfg = self.cfg
        h = _dense(cfg, (cfg.d_model,), ("embed",), ("embed_out",), _out_std(cfg), "dense")(x_BxXxD)
        return _norm(cfg, "norm")(gelu(h, False))


def gather_positions(x_BxTxD, positions_BxP):
    """The hidden states at `positions` (B x P int) -> B x P x D: the MLM head runs on these only."""
    return jnp.take_along_axis(x_BxTxD, positions_BxP[..., None], axis=1)


class ModernBertModel(nn.Module):
    """The bare encoder: final hidden states B x T x D."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        """`token_type_ids_BxT` is accepted for the encoder tasks' common call and unused (ModernBERT has none)."""
        return Encoder(self.cfg, name="model")(input_ids_BxT, attention_mask_BxT, deterministic=deterministic)[0]


class ModernBertForMaskedLM(nn.Module):
    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *,
                 masked_positions_BxP=None, deterministic=True):
        """Logits B x T x V, or B x P x V at `masked_positions_BxP` when given: the head, then the
        decoder (tied to the token embeddings, or its own D x V kernel) with a vocabulary bias."""
        cfg = self.cfg
        x_BxTxD, tokens = Encoder(cfg, name="model")(input_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        if masked_positions_BxP is not None:
            x_BxTxD = gather_positions(x_BxTxD, masked_positions_BxP)
        h_BxPxD = PredictionHead(cfg, name="head")(x_BxTxD)
        logits_BxPxV = DecoderHead(cfg, name="decoder")(h_BxPxD, tokens)
        return nn.with_logical_constraint(logits_BxPxV, ("batch", "act_length", "act_vocab"))


class DecoderHead(nn.Module):
    """The MLM decoder: x . E^T (tied) or x . W (D x V), plus a bias of V."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, x_BxPxD, tokens: nn.Embed):
        cfg = self.cfg
        if cfg.tie_word_embeddings:
            logits_BxPxV = tied_logits(x_BxPxD, tokens)
        else:
            kernel_DxV = self.param("kernel", nn.with_logical_partitioning(_trunc_normal(_out_std(cfg)),
                                                                            ("embed", "vocab")),
                                    (cfg.d_model, cfg.vocab_size), DTYPES[cfg.param_dtype])
            dtype = DTYPES[cfg.dtype]
            logits_BxPxV = contract(x_BxPxD.astype(dtype), kernel_DxV.astype(dtype), None, 1)
        bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                            (cfg.vocab_size,), DTYPES[cfg.param_dtype])
        return logits_BxPxV + bias_V.astype(logits_BxPxV.dtype)


def _classify(cfg: ModernBertConfig, x_BxXxD, n_out: int, deterministic: bool):
    """The prediction head ("head"), dropout and a linear layer with a bias ("classifier") to `n_out`
    scores; called inside a head's compact `__call__`, whose children they become (HF's names)."""
    h = nn.Dropout(cfg.dropout, deterministic=deterministic)(PredictionHead(cfg, name="head")(x_BxXxD))
    return _dense(cfg, (n_out,), ("embed",), (None,), cfg.d_model ** -0.5, "classifier", bias=True)(h)


class ModernBertForSequenceClassification(nn.Module):
    """Logits B x C (one score per example for regression) of the first token ("cls") or of the
    mean over the attention mask ("mean")."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        cfg = self.cfg
        x_BxTxD, _ = Encoder(cfg, name="model")(input_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        if cfg.classifier_pooling == "cls":
            pooled_BxD = x_BxTxD[:, 0]
        else:
            mask_BxTx1 = (jnp.ones(input_ids_BxT.shape) if attention_mask_BxT is None
                          else attention_mask_BxT)[..., None].astype(x_BxTxD.dtype)
            pooled_BxD = (x_BxTxD * mask_BxTx1).sum(1) / mask_BxTx1.sum(1)
        return _classify(cfg, pooled_BxD, cfg.num_labels, deterministic)


class ModernBertForTokenClassification(nn.Module):
    """Logits B x T x C."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        x_BxTxD, _ = Encoder(self.cfg, name="model")(input_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        return _classify(self.cfg, x_BxTxD, self.cfg.num_labels, deterministic)


class ModernBertForQuestionAnswering(nn.Module):
    """(start logits, end logits), each B x T."""

    cfg: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        x_BxTxD, _ = Encoder(self.cfg, name="model")(input_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        logits_BxTx2 = _classify(self.cfg, x_BxTxD, 2, deterministic)
        return logits_BxTx2[..., 0], logits_BxTx2[..., 1]


def num_params(cfg: ModernBertConfig) -> int:
    """Encoder parameters (token embedding, layers, norms), without the task heads."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = 3 * d * d + d * d + 2 * d * f + f * d + 2 * d
    return cfg.vocab_size * d + cfg.n_layers * per_layer + d  # layer 0's missing attn_norm and the two outer norms


def flops_per_token(cfg: ModernBertConfig, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12 L H Q S (fwd + bwd), N without the embedding (a lookup), S
    the keys a query sees: seq_len in a global layer, at most local_attention + 1 in a local one."""
    local = min(seq_len, cfg.local_attention + 1)
    keys = sum(seq_len if cfg.is_global(i) else local for i in range(cfg.n_layers))
    return 6 * (num_params(cfg) - cfg.vocab_size * cfg.d_model) + 12 * cfg.d_model * keys


HEADS = {
    "": ModernBertModel,
    "masked_lm": ModernBertForMaskedLM,
    "sequence_classification": ModernBertForSequenceClassification,
    "token_classification": ModernBertForTokenClassification,
    "question_answering": ModernBertForQuestionAnswering,
}
