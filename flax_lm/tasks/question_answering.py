"""Extractive question answering (SQuAD): start and end of the answer span."""

import jax.numpy as jnp

from flax_lm.metrics import squad_metrics
from flax_lm.tasks import prediction_formats
from flax_lm.tasks.base import Task
from flax_lm.tasks.encoder import apply_encoder, cross_entropy, encoder_spec


class QuestionAnswering(Task):
    """Batch: the encoder inputs (question, then a window of the context) and `start_positions`,
    `end_positions` (B,). Loss: the mean of the start and end cross-entropies, per window."""

    output_formats = {**prediction_formats.COMMON, ".json": prediction_formats.squad}

    def weights(self, batch):
        return {"span": batch["weights"].sum()}

    def loss(self, model, params, batch, *, rngs, deterministic):
        start_BxT, end_BxT = apply_encoder(model, params, batch, rngs=rngs, deterministic=deterministic)
        per_window = 0.5 * (cross_entropy(start_BxT, batch["start_positions"])
                            + cross_entropy(end_BxT, batch["end_positions"]))
        return {"span": (per_window * batch["weights"]).sum()}, {"start_logits": start_BxT, "end_logits": end_BxT}

    def metrics(self, outputs, dataset, term_losses):
        """Exact match and F1 of the best span per question, over the questions evaluated."""
        answers = dataset.postprocess(outputs["start_logits"], outputs["end_logits"])
        references = {k: v for k, v in dataset.references.items() if k in answers}
        return squad_metrics(answers, references)

    def batch_spec(self, cfg, batch_size):
        B = batch_size
        return encoder_spec(cfg, B, start_positions=((B,), jnp.int32), end_positions=((B,), jnp.int32))

    def predictions(self, inference, dataset):
        """Each question's id with its best answer span's text."""
        outputs = inference.outputs(dataset)
        answers = dataset.postprocess(outputs["start_logits"], outputs["end_logits"])
        return [{"id": question, "answer": answer} for question, answer in answers.items()]
