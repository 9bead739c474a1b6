"""BERT and RoBERTa encoders as Flax Linen modules, layer for layer `transformers.BertModel`
and `transformers.RobertaModel`, with the heads of the `BertFor...` / `RobertaFor...` classes.

Post-LayerNorm blocks, word + position + token-type embeddings, exact (erf) GELU and a
tanh pooler over the first token. RoBERTa is the same encoder with positions counted
from `pad_token_id + 1` over the non-padding tokens and its own classification head.
Tensor names carry their shapes: B batch, T length, P masked positions, D d_model,
N heads, H head size, F d_ff, V vocab, C labels.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flax_lm import backends
from flax_lm.ops.attention import dot_product_attention
from flax_lm.models.config import ModelConfig
from flax_lm.models.layers import (DTYPES, Projection, dtypes, from_run_config, gelu, layer_norm, split_qkv,
                                  tied_logits)
from flax_lm.models.remat import POLICIES

VARIANTS = ("bert", "roberta")


@dataclasses.dataclass(frozen=True)
class BertConfig(ModelConfig):
    # max_len: usable positions (RoBERTa's table has pad_token_id + 1 more rows)
    layer_norm_epsilon: float = 1e-12
    dropout: float = 0.1
    type_vocab_size: int = 2
    pad_token_id: int = 0
    variant: str = "bert"
    num_labels: int = 2      # for the classification heads; 1 means regression

    @classmethod
    def from_config(cls, model_cfg) -> "BertConfig":
        """Builds the model config from the `model` section of a run config."""
        return from_run_config(cls, model_cfg, num_labels=model_cfg.num_labels or 2)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def position_offset(self) -> int:
        """RoBERTa numbers positions from pad_token_id + 1; BERT from 0."""
        return self.pad_token_id + 1 if self.variant == "roberta" else 0


def _dense(cfg: BertConfig, features: tuple, in_axes: tuple, out_axes: tuple, name: str) -> Projection:
    return Projection(features, in_axes, out_axes, nn.initializers.normal(cfg.initializer_range),
                      bias_axes=out_axes, name=name, **dtypes(cfg))


def _embed(cfg: BertConfig, rows: int, axis: str | None, name: str) -> nn.Embed:
    init = nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), (axis, "embed"))
    return nn.Embed(rows, cfg.d_model, embedding_init=init, name=name, **dtypes(cfg))


def position_ids(input_ids_BxT, cfg: BertConfig):
    """BERT: 0..T-1. RoBERTa: pad_token_id + 1 + the count of non-padding tokens so far,
    and pad_token_id on padding (as `transformers` create_position_ids_from_input_ids)."""
    if cfg.variant == "bert":
        return jnp.broadcast_to(jnp.arange(input_ids_BxT.shape[1]), input_ids_BxT.shape)
    real_BxT = (input_ids_BxT != cfg.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real_BxT, axis=1) * real_BxT + cfg.pad_token_id


class Embeddings(nn.Module):
    cfg: BertConfig
    deterministic: bool

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT):
        cfg = self.cfg
        word = _embed(cfg, cfg.vocab_size, "vocab", "word_embeddings")
        x_BxTxD = (word(input_ids_BxT)
                   + _embed(cfg, cfg.max_len + cfg.position_offset, "positions", "position_embeddings")(
                       position_ids(input_ids_BxT, cfg))
                   + _embed(cfg, cfg.type_vocab_size, None, "token_type_embeddings")(token_type_ids_BxT))
        x_BxTxD = layer_norm(cfg, "LayerNorm")(x_BxTxD)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=self.deterministic)(x_BxTxD)
        return nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed")), word


class SelfAttention(nn.Module):
    cfg: BertConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxT):
        cfg = self.cfg
        # Query, key and value in one projection laid out (D, 3, N, H): one matmul, heads shard over "tensor".
        qkv_BxTx3xNxH = _dense(cfg, (3, cfg.n_heads, cfg.head_dim), ("embed",), ("qkv", "heads", "head_dim"),
                               "qkv")(x_BxTxD)
        dropout_rng = None
        if cfg.attention_dropout > 0 and not self.deterministic:
            dropout_rng = self.make_rng("dropout")
        out_BxTxNxH = dot_product_attention(
            *split_qkv(qkv_BxTx3xNxH), causal=False, kv_mask_BxS=kv_mask_BxT,
            implementation=cfg.attention, dropout_rate=0.0 if self.deterministic else cfg.attention_dropout,
            dropout_rng=dropout_rng)
        out_BxTxNxH = nn.with_logical_constraint(out_BxTxNxH, ("batch", "act_length", "act_heads", None))
        return _dense(cfg, (cfg.d_model,), ("heads", "head_dim"), ("embed",), "out")(out_BxTxNxH)


class Layer(nn.Module):
    """One post-LayerNorm block; scan-compatible (carry, mask) -> (carry, None)."""

    cfg: BertConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxT):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        h_BxTxD = SelfAttention(cfg, self.deterministic, name="attention")(x_BxTxD, kv_mask_BxT)
        x_BxTxD = layer_norm(cfg, "attention_ln")(x_BxTxD + checkpoint_name(drop(h_BxTxD), "attn_out"))
        h_BxTxF = gelu(_dense(cfg, (cfg.d_ff,), ("embed",), ("mlp",), "intermediate")(x_BxTxD), False)
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, ("batch", "act_length", "act_mlp"))
        h_BxTxD = _dense(cfg, (cfg.d_model,), ("mlp",), ("embed",), "output")(h_BxTxF)
        x_BxTxD = layer_norm(cfg, "output_ln")(x_BxTxD + checkpoint_name(drop(h_BxTxD), "mlp_out"))
        return nn.with_logical_constraint(x_BxTxD, ("batch", "act_length", "act_embed")), None


class Encoder(nn.Module):
    """Embeddings, the stack of layers and (optionally) the pooler: `BertModel`."""

    cfg: BertConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        """Returns (hidden states B x T x D, pooled B x D or None, the word-embedding module)."""
        cfg = self.cfg
        if token_type_ids_BxT is None:
            token_type_ids_BxT = jnp.zeros_like(input_ids_BxT)
        kv_mask_BxT = None if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
        x_BxTxD, word = Embeddings(cfg, deterministic, name="embeddings")(input_ids_BxT, token_type_ids_BxT)
        layer = Layer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x_BxTxD, _ = nn.scan(
                layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast, length=cfg.n_layers, unroll=backends.current().scan_unroll(cfg.n_layers),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, deterministic, name="layers")(x_BxTxD, kv_mask_BxT)
        else:
            for i in range(cfg.n_layers):
                x_BxTxD, _ = layer(cfg, deterministic, name=f"layer_{i}")(x_BxTxD, kv_mask_BxT)
        pooled_BxD = None
        if self.add_pooling_layer:
            pooled_BxD = jnp.tanh(_dense(cfg, (cfg.d_model,), ("embed",), ("embed_out",), "pooler")(x_BxTxD[:, 0]))
        return x_BxTxD, pooled_BxD, word


class MaskedLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then the tied word embeddings and a vocabulary bias."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, x_BxPxD, word: nn.Embed):
        cfg = self.cfg
        h_BxPxD = gelu(_dense(cfg, (cfg.d_model,), ("embed",), ("embed_out",), "transform")(x_BxPxD), False)
        h_BxPxD = layer_norm(cfg, "transform_ln")(h_BxPxD)
        bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                            (cfg.vocab_size,), DTYPES[cfg.param_dtype])
        logits_BxPxV = tied_logits(h_BxPxD, word) + bias_V.astype(h_BxPxD.dtype)
        return nn.with_logical_constraint(logits_BxPxV, ("batch", "act_length", "act_vocab"))


def gather_positions(x_BxTxD, positions_BxP):
    """The hidden states at `positions` (B x P int) -> B x P x D: the MLM head runs on these only."""
    return jnp.take_along_axis(x_BxTxD, positions_BxP[..., None], axis=1)


class BertModel(nn.Module):
    """The bare encoder with its pooler, as `transformers.BertModel` / `RobertaModel`: a base model
    imported to serve embeddings. Returns (hidden states B x T x D, pooled first token B x D)."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        x_BxTxD, pooled_BxD, _ = Encoder(self.cfg, name="bert")(
            input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        return x_BxTxD, pooled_BxD


class BertForPreTraining(nn.Module):
    """Masked LM + next-sentence prediction. Returns (MLM logits, NSP logits B x 2)."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *,
                 masked_positions_BxP=None, deterministic=True):
        """MLM logits are B x T x V, or B x P x V at `masked_positions_BxP` when given."""
        x_BxTxD, pooled_BxD, word = Encoder(self.cfg, name="bert")(
            input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        if masked_positions_BxP is not None:
            x_BxTxD = gather_positions(x_BxTxD, masked_positions_BxP)
        mlm_logits = MaskedLMHead(self.cfg, name="mlm")(x_BxTxD, word)
        nsp_logits_Bx2 = _dense(self.cfg, (2,), ("embed",), (None,), "nsp")(pooled_BxD)
        return mlm_logits, nsp_logits_Bx2


class BertForMaskedLM(nn.Module):
    """Masked LM only (no pooler, as `BertForMaskedLM` / `RobertaForMaskedLM`)."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *,
                 masked_positions_BxP=None, deterministic=True):
        """Logits B x T x V, or B x P x V at `masked_positions_BxP` when given."""
        x_BxTxD, _, word = Encoder(self.cfg, add_pooling_layer=False, name="bert")(
            input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        if masked_positions_BxP is not None:
            x_BxTxD = gather_positions(x_BxTxD, masked_positions_BxP)
        return MaskedLMHead(self.cfg, name="mlm")(x_BxTxD, word)


class BertForSequenceClassification(nn.Module):
    """Logits B x C (C = num_labels; one score per example for regression).

    BERT: dropout and a linear layer on the pooled first token. RoBERTa: dropout, dense,
    tanh, dropout and a linear layer on the first token's hidden state (no pooler).
    """

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        cfg = self.cfg
        roberta = cfg.variant == "roberta"
        x_BxTxD, pooled_BxD, _ = Encoder(cfg, add_pooling_layer=not roberta, name="bert")(
            input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
        if roberta:
            pooled_BxD = jnp.tanh(_dense(cfg, (cfg.d_model,), ("embed",), ("embed_out",), "classifier_dense")(
                drop(x_BxTxD[:, 0])))
        return _dense(cfg, (cfg.num_labels,), ("embed",), (None,), "classifier")(drop(pooled_BxD))


class BertForTokenClassification(nn.Module):
    """Logits B x T x C: dropout and a linear layer on every token (no pooler)."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        x_BxTxD, _, _ = Encoder(self.cfg, add_pooling_layer=False, name="bert")(
            input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        x_BxTxD = nn.Dropout(self.cfg.dropout, deterministic=deterministic)(x_BxTxD)
        return _dense(self.cfg, (self.cfg.num_labels,), ("embed",), (None,), "classifier")(x_BxTxD)


class BertForQuestionAnswering(nn.Module):
    """(start logits, end logits), each B x T: a linear layer to two scores per token."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxT, token_type_ids_BxT=None, attention_mask_BxT=None, *, deterministic=True):
        x_BxTxD, _, _ = Encoder(self.cfg, add_pooling_layer=False, name="bert")(
            input_ids_BxT, token_type_ids_BxT, attention_mask_BxT, deterministic=deterministic)
        logits_BxTx2 = _dense(self.cfg, (2,), ("embed",), (None,), "qa_outputs")(x_BxTxD)
        return logits_BxTx2[..., 0], logits_BxTx2[..., 1]


def num_params(cfg: BertConfig) -> int:
    """Encoder parameters without embeddings of positions and token types (the N of 6N)."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    return cfg.vocab_size * d + cfg.n_layers * per_layer


def flops_per_token(cfg: BertConfig, seq_len: int) -> float:
    """Training FLOPs per token of the encoder, 6N + 12 L H Q T (fwd + bwd); the heads are
    left out (the MLM head runs on 15% of tokens only)."""
    return 6 * (num_params(cfg) - cfg.vocab_size * cfg.d_model) + 12 * cfg.n_layers * cfg.d_model * seq_len


HEADS = {
    "": BertModel,  # no head: the base model
    "pretraining": BertForPreTraining,
    "masked_lm": BertForMaskedLM,
    "sequence_classification": BertForSequenceClassification,
    "token_classification": BertForTokenClassification,
    "question_answering": BertForQuestionAnswering,
}
