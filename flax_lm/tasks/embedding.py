"""Sentence embeddings: one vector per text from a model's last hidden states.

Not trained (no loss term); the evaluator's batching runs it to give each example's embedding.
The hidden states are those of the model's encoder whatever its head, so a fine-tuned encoder
embeds as well as an imported base model: BERT's encoder output, a decoder's final-norm output
(as `GPT2Model` / `LlamaModel`), T5's encoder output.
"""

import jax.numpy as jnp

from flax_lm.models import bert, modernbert, t5
from flax_lm.models.decoder import DecoderConfig
from flax_lm.tasks.base import Task

POOLINGS = ("mean", "cls", "last")


class SentenceEmbedding(Task):
    """Batch: the encoder inputs (`input_ids`, `token_type_ids`, `attention_mask`, B x T, right-padded).
    Output "embedding" (B x D float32):

    - "mean": the mean of the hidden states over the attention mask, as sentence-transformers'
      Pooling(pooling_mode_mean_tokens) (the count clamped at 1e-9);
    - "cls": the first token's hidden state (BERT's [CLS]; not the pooler's tanh output);
    - "last": the last real token's (a decoder's summary of the whole text).

    `normalize` divides each by its L2 norm (at least 1e-12), as sentence-transformers' Normalize.
    """

    def __init__(self, pooling: str = "mean", normalize: bool = False):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        self.pooling, self.normalize = pooling, normalize

    def weights(self, batch):
        return {}

    def loss(self, model, params, batch, *, rngs, deterministic):
        mask_BxT = batch["attention_mask"]
        hidden_BxTxD = last_hidden_states(model, params, batch, deterministic).astype(jnp.float32)
        mask_BxTx1 = mask_BxT[..., None].astype(jnp.float32)
        if self.pooling == "mean":
            x_BxD = (hidden_BxTxD * mask_BxTx1).sum(1) / jnp.maximum(mask_BxTx1.sum(1), 1e-9)
        elif self.pooling == "cls":
            x_BxD = hidden_BxTxD[:, 0]
        else:
            last_B = jnp.maximum(mask_BxT.sum(1) - 1, 0)
            x_BxD = jnp.take_along_axis(hidden_BxTxD, last_B[:, None, None], axis=1)[:, 0]
        if self.normalize:
            x_BxD = x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), 1e-12)
        return {}, {"embedding": x_BxD}

    def metrics(self, outputs, dataset, term_losses):
        return {}


def last_hidden_states(model, params, batch: dict, deterministic: bool = True):
    """The model's last hidden states B x T x D (compute dtype) on an encoder batch."""
    cfg = model.cfg
    if isinstance(cfg, bert.BertConfig):  # every BERT head holds the encoder under "bert"
        encoder = bert.Encoder(cfg, add_pooling_layer=False)
        hidden_BxTxD, _, _ = encoder.apply({"params": {k: v for k, v in params["bert"].items() if k != "pooler"}},
                                           batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                           deterministic=deterministic)
        return hidden_BxTxD
    if isinstance(cfg, modernbert.ModernBertConfig):  # every ModernBERT head holds the encoder under "model"
        hidden_BxTxD, _ = modernbert.Encoder(cfg).apply({"params": params["model"]}, batch["input_ids"],
                                                       batch["attention_mask"], deterministic=deterministic)
        return hidden_BxTxD
    if isinstance(cfg, DecoderConfig):
        hidden_BxTxD, _ = model.apply({"params": params}, batch["input_ids"],
                                      attention_mask_BxT=batch["attention_mask"], deterministic=deterministic,
                                      return_hidden=True)
        return hidden_BxTxD
    if isinstance(cfg, t5.T5Config):
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], deterministic,
                           method="encode")
    raise ValueError(f"no hidden states for a {type(cfg).__name__} model")
