"""Causal language modelling: predict token t+1 from tokens <= t."""

import jax.numpy as jnp
import optax

from flax_lm.tasks.base import LossOutput


class CausalLM:
    """Batch: `inputs` and `targets` (B x T int32, targets shifted by one) and
    `weights` (B x T float32, 0 where a position must not count)."""

    def loss(self, model, params, batch, *, rngs, deterministic) -> LossOutput:
        logits_BxTxV = model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs)
        token_loss_BxT = optax.softmax_cross_entropy_with_integer_labels(
            logits_BxTxV.astype(jnp.float32), batch["targets"])
        weights_BxT = batch["weights"]
        return LossOutput(jnp.sum(token_loss_BxT * weights_BxT), jnp.sum(weights_BxT))
