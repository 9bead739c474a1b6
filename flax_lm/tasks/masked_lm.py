"""Masked language modelling, with next-sentence prediction as an option (BERT pre-training)."""

import math

import jax.numpy as jnp
import numpy as np

from flax_lm.data import pipeline
from flax_lm.tasks.base import Task
from flax_lm.tasks.encoder import apply_encoder, cross_entropy, encoder_spec


class MaskedLM(Task):
    """Batch: the encoder inputs, `masked_positions` / `masked_ids` / `masked_weights` (B x P) and,
    with NSP, `next_sentence_label` (B,). The vocabulary projection runs only at the P masked
    positions. Loss terms: "mlm" per masked token, "nsp" per example."""

    def __init__(self, nsp: bool):
        self.nsp = nsp

    def weights(self, batch):
        w = {"mlm": (batch["masked_weights"] * batch["weights"][:, None]).sum()}
        if self.nsp:
            w["nsp"] = batch["weights"].sum()
        return w

    def loss(self, model, params, batch, *, rngs, deterministic):
        out = apply_encoder(model, params, batch, rngs=rngs, deterministic=deterministic,
                            masked_positions_BxP=batch["masked_positions"])
        mlm_logits_BxPxV, nsp_logits_Bx2 = out if self.nsp else (out, None)
        w_BxP = batch["masked_weights"] * batch["weights"][:, None]
        correct_BxP = (mlm_logits_BxPxV.argmax(-1) == batch["masked_ids"]) * w_BxP
        sums = {"mlm": (cross_entropy(mlm_logits_BxPxV, batch["masked_ids"]) * w_BxP).sum()}
        outputs = {"mlm_correct": correct_BxP.sum(-1), "mlm_count": w_BxP.sum(-1)}
        if self.nsp:
            labels_B = batch["next_sentence_label"]
            sums["nsp"] = (cross_entropy(nsp_logits_Bx2, labels_B) * batch["weights"]).sum()
            outputs["nsp_correct"] = (nsp_logits_Bx2.argmax(-1) == labels_B).astype(jnp.float32)
        return sums, outputs

    def metrics(self, outputs, dataset, term_losses):
        m = {"mlm_accuracy": float(np.sum(outputs["mlm_correct"]) / max(np.sum(outputs["mlm_count"]), 1.0)),
             "perplexity": math.exp(min(term_losses["mlm"], 50.0))}
        if self.nsp:
            m["nsp_accuracy"] = float(np.mean(outputs["nsp_correct"]))
        return m

    def batch_spec(self, cfg, batch_size):
        B = batch_size
        P = cfg.data.max_predictions or math.ceil(cfg.data.mask_prob * pipeline.seq_len(cfg))  # as MLMDataset's
        own = {"masked_positions": ((B, P), jnp.int32), "masked_ids": ((B, P), jnp.int32),
               "masked_weights": ((B, P), jnp.float32)}
        if self.nsp:
            own["next_sentence_label"] = ((B,), jnp.int32)
        return encoder_spec(cfg, B, **own)
