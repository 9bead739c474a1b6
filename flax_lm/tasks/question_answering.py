"""Extractive question answering (SQuAD): start and end of the answer span."""

from flax_lm.metrics import squad_metrics
from flax_lm.tasks.encoder import apply_encoder, cross_entropy


class QuestionAnswering:
    """Batch: the encoder inputs (question, then a window of the context) and `start_positions`,
    `end_positions` (B,). Loss: the mean of the start and end cross-entropies, per window."""

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
