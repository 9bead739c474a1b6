"""Causal language modelling: predict token t+1 from tokens <= t."""

import math

import jax.numpy as jnp

from flax_lm.data import pipeline
from flax_lm.ops.losses import linear_cross_entropy
from flax_lm.tasks.base import Task, shapes


class CausalLM(Task):
    """Batch: `inputs` and `targets` (B x T int32, targets shifted by one) and
    `weights` (B x T float32, 0 where a position must not count); with packed documents
    also `segment_ids` and `positions` (B x T int32, see `flax_lm.data.lm_data`).

    `loss_chunk_len` > 0 fuses the output projection into a chunked cross-entropy.
    `label_smoothing` smooths the training targets; evaluation reports the plain loss (and
    its perplexity), comparable across settings.
    """

    def __init__(self, loss_chunk_len: int = 0, label_smoothing: float = 0.0):
        self.loss_chunk_len, self.label_smoothing = loss_chunk_len, label_smoothing

    def cross_entropy(self, hidden_BxTxD, embedding_VxD, batch, deterministic: bool):
        """The summed (smoothed, when training) cross-entropy of the batch's targets."""
        return linear_cross_entropy(hidden_BxTxD, embedding_VxD, batch["targets"], batch["weights"],
                                    self.loss_chunk_len, 0.0 if deterministic else self.label_smoothing)

    def weights(self, batch):
        return {"lm": batch["weights"].sum()}

    def loss(self, model, params, batch, *, rngs, deterministic):
        hidden_BxTxD, embedding_VxD = model.apply(
            {"params": params}, batch["inputs"], segment_ids_BxT=batch.get("segment_ids"),
            position_ids_BxT=batch.get("positions"), deterministic=deterministic, rngs=rngs, return_hidden=True)
        return {"lm": self.cross_entropy(hidden_BxTxD, embedding_VxD, batch, deterministic)}, {}

    def metrics(self, outputs, dataset, term_losses):
        return {"perplexity": math.exp(min(term_losses["lm"], 50.0))}

    def batch_spec(self, cfg, batch_size):
        B, T = batch_size, pipeline.seq_len(cfg)
        spec = {"inputs": ((B, T), jnp.int32), "targets": ((B, T), jnp.int32), "weights": ((B, T), jnp.float32)}
        if cfg.data.packing == "segments":   # packed documents kept apart: the attention masks by segment
            spec.update(segment_ids=((B, T), jnp.int32), positions=((B, T), jnp.int32))
        return shapes(spec)

    def end_of_run_sample(self, inference, validation, prompt):
        return "sample:\n" + inference.continue_text(prompt)
