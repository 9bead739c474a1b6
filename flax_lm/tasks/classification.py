"""Sequence classification (single text or text pair), and regression when num_labels == 1."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_lm.metrics import classification_metrics, regression_metrics
from flax_lm.tasks.encoder import apply_encoder, cross_entropy


class SequenceClassification:
    """Batch: the encoder inputs and `labels` (B,), int32 class ids or float32 scores for
    regression. Loss: cross-entropy per example, or squared error for regression."""

    def __init__(self, label_names: list[str]):
        self.label_names = label_names
        self.regression = len(label_names) == 1

    def weights(self, batch):
        return {"classification": batch["weights"].sum()}

    def loss(self, model, params, batch, *, rngs, deterministic):
        logits_BxC = apply_encoder(model, params, batch, rngs=rngs, deterministic=deterministic)
        labels_B = batch["labels"]
        if self.regression:
            score_B = logits_BxC[:, 0].astype(jnp.float32)
            per_example = (score_B - labels_B) ** 2
            outputs = {"prediction": score_B, "label": labels_B}
        else:
            per_example = cross_entropy(logits_BxC, labels_B)
            outputs = {"prediction": logits_BxC.argmax(-1), "label": labels_B,
                       "probabilities": jax.nn.softmax(logits_BxC.astype(jnp.float32), -1)}
        return {"classification": (per_example * batch["weights"]).sum()}, outputs

    def metrics(self, outputs, dataset, term_losses):
        if self.regression:
            return regression_metrics(np.asarray(outputs["prediction"]), np.asarray(outputs["label"]))
        return classification_metrics(np.asarray(outputs["prediction"]), np.asarray(outputs["label"]),
                                      self.label_names)
