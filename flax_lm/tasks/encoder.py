"""What the encoder tasks share: running the model on a tokenized batch, and cross-entropy."""

import jax.numpy as jnp
import optax


def apply_encoder(model, params, batch: dict, *, rngs, deterministic: bool, **kwargs):
    """The model on the batch's `input_ids`, `token_type_ids` and `attention_mask` (B x T)."""
    return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                       deterministic=deterministic, rngs=rngs, **kwargs)


def cross_entropy(logits, labels):
    """Per-position cross-entropy in float32: logits (..., C), integer labels (...) -> (...)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
