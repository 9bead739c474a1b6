"""Bidirectional language modelling (ELMo): the forward LM predicts token t+1 from tokens <= t, the
backward LM token t-1 from tokens >= t; the loss is the mean over both directions' predictions."""

import jax.numpy as jnp

from flax_lm.ops.losses import linear_cross_entropy
from flax_lm.tasks.causal_lm import CausalLM


def previous_tokens(batch: dict):
    """(targets B x T, weights B x T) of the backward LM from a causal LM batch: the token before each
    input, weight 0 at the first position (nothing precedes it in the window)."""
    inputs_BxT, weights_BxT = batch["inputs"], batch["weights"]
    previous_BxT = jnp.pad(inputs_BxT[:, :-1], ((0, 0), (1, 0)))
    return previous_BxT, weights_BxT.at[:, 0].set(0.0)


class BidirectionalLM(CausalLM):
    """The batch of `CausalLM` (its `targets` are the forward LM's), with packing=concat. One loss
    term, `lm`, summed over the forward and backward predictions, so that dividing by its weight
    (both directions' token counts) gives their mean; `perplexity` is that mean's."""

    def weights(self, batch):
        return {"lm": batch["weights"].sum() + previous_tokens(batch)[1].sum()}

    def loss(self, model, params, batch, *, rngs, deterministic):
        forward_BxTxD, backward_BxTxD, softmax_VxD = model.apply(
            {"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs)
        smoothing = 0.0 if deterministic else self.label_smoothing
        previous_BxT, previous_weights_BxT = previous_tokens(batch)
        forward = linear_cross_entropy(forward_BxTxD, softmax_VxD, batch["targets"], batch["weights"],
                                       self.loss_chunk_len, smoothing)
        backward = linear_cross_entropy(backward_BxTxD, softmax_VxD, previous_BxT, previous_weights_BxT,
                                        self.loss_chunk_len, smoothing)
        return {"lm": forward + backward}, {}

    def end_of_run_sample(self, inference, validation, prompt):
        return None   # a bidirectional LM does not continue text
