"""What the encoder tasks share: running the model on a tokenized batch, its inputs' batch spec,
and cross-entropy."""

import jax.numpy as jnp
import optax

from flax_lm.data import pipeline
from flax_lm.tasks.base import shapes


def apply_encoder(model, params, batch: dict, *, rngs, deterministic: bool, **kwargs):
    """The model on the batch's `input_ids`, `token_type_ids` and `attention_mask` (B x T)."""
    return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                       deterministic=deterministic, rngs=rngs, **kwargs)


def encoder_spec(cfg, batch_size: int, **own):
    """The batch spec of an encoder task (see `flax_lm.data.dataset.encoder_batch`): the encoder
    inputs (B x T int32, T = data.seq_len), `weights` (B,) float32 and the task's `own` arrays
    (name -> (shape, dtype))."""
    B, T = batch_size, pipeline.seq_len(cfg)
    return shapes({"input_ids": ((B, T), jnp.int32), "token_type_ids": ((B, T), jnp.int32),
                   "attention_mask": ((B, T), jnp.int32), **own, "weights": ((B,), jnp.float32)})


def cross_entropy(logits, labels):
    """Per-position cross-entropy in float32: logits (..., C), integer labels (...) -> (...)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
