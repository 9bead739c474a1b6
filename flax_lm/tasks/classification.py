"""Sequence classification (single text or text pair), and regression when num_labels == 1."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_lm.metrics import classification_metrics, regression_metrics
from flax_lm.tasks.base import Task
from flax_lm.tasks.encoder import apply_encoder, cross_entropy, encoder_spec


class SequenceClassification(Task):
    """Batch: the encoder inputs and `labels` (B,), int32 class ids or float32 scores for
    regression. Loss: cross-entropy per example, or squared error for regression.

    `label_names` (in id order; ["score"] for regression) name the classes in metrics and
    predictions; None where no data was read (compile), and `regression` then says which."""

    def __init__(self, label_names: list[str] | None, regression: bool | None = None):
        self.label_names = label_names
        self.regression = len(label_names) == 1 if regression is None else regression

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

    def batch_spec(self, cfg, batch_size):
        return encoder_spec(cfg, batch_size, labels=((batch_size,), jnp.float32 if self.regression else jnp.int32))

    def predictions(self, inference, dataset):
        """Each text (and text_pair) with its label and the label's probability, or its score."""
        outputs, examples, records = inference.outputs(dataset), dataset.examples, []
        for i, text in enumerate(examples.texts):
            record = {"text": text}
            if examples.pairs is not None:
                record["text_pair"] = examples.pairs[i]
            if self.label_names == ["score"]:
                record["score"] = float(outputs["prediction"][i])
            else:
                label = int(outputs["prediction"][i])
                record.update(label=self.label_names[label],
                              probability=float(np.asarray(outputs["probabilities"])[i, label]))
            records.append(record)
        return records
