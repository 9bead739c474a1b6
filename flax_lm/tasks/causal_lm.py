"""Causal language modelling: predict token t+1 from tokens <= t."""

from flax_lm.losses import linear_cross_entropy
from flax_lm.tasks.base import LossOutput


class CausalLM:
    """Batch: `inputs` and `targets` (B x T int32, targets shifted by one) and
    `weights` (B x T float32, 0 where a position must not count).

    `loss_chunk_len` > 0 fuses the output projection into a chunked cross-entropy.
    """

    def __init__(self, loss_chunk_len: int = 0):
        self.loss_chunk_len = loss_chunk_len

    def loss(self, model, params, batch, *, rngs, deterministic) -> LossOutput:
        hidden_BxTxD, embedding_VxD = model.apply(
            {"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs, return_hidden=True)
        weights_BxT = batch["weights"]
        loss_sum = linear_cross_entropy(hidden_BxTxD, embedding_VxD, batch["targets"], weights_BxT,
                                        self.loss_chunk_len)
        return LossOutput(loss_sum, weights_BxT.sum())
