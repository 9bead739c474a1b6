"""Token classification (NER): a tag for the first sub-word of every word."""

import jax.numpy as jnp

from flax_lm.data import pipeline
from flax_lm.metrics import entity_metrics
from flax_lm.tasks import prediction_formats
from flax_lm.tasks.base import Task
from flax_lm.tasks.encoder import apply_encoder, cross_entropy, encoder_spec


class TokenClassification(Task):
    """Batch: the encoder inputs, `labels` (B x T tag ids) and `label_weights` (B x T, 1 on the
    first sub-word of each word). Loss: cross-entropy per labelled token."""

    # a sentence's words and tags are lists: no table; its text is CoNLL's
    output_formats = {".jsonl": prediction_formats.json_lines, ".txt": prediction_formats.conll,
                      ".conll": prediction_formats.conll}

    def __init__(self, tag_names: list[str]):
        self.tag_names = tag_names

    def weights(self, batch):
        return {"tokens": (batch["label_weights"] * batch["weights"][:, None]).sum()}

    def loss(self, model, params, batch, *, rngs, deterministic):
        logits_BxTxC = apply_encoder(model, params, batch, rngs=rngs, deterministic=deterministic)
        w_BxT = batch["label_weights"] * batch["weights"][:, None]
        loss_sum = (cross_entropy(logits_BxTxC, batch["labels"]) * w_BxT).sum()
        return {"tokens": loss_sum}, {"prediction": logits_BxTxC.argmax(-1)}

    def metrics(self, outputs, dataset, term_losses):
        """Entity-level scores on the original words (words cut off by truncation count as "O")."""
        predicted = dataset.word_predictions(outputs["prediction"])
        gold = [s.tags for s in dataset.sentences[:len(predicted)]]
        return entity_metrics(gold, predicted)

    def batch_spec(self, cfg, batch_size):
        B, T = batch_size, pipeline.seq_len(cfg)
        return encoder_spec(cfg, B, labels=((B, T), jnp.int32), label_weights=((B, T), jnp.float32))

    def predictions(self, inference, dataset):
        """Each sentence's words with their predicted tags."""
        predicted = dataset.word_predictions(inference.outputs(dataset)["prediction"])
        return [{"words": sentence.words, "tags": tags} for sentence, tags in zip(dataset.sentences, predicted)]
