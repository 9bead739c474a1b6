"""Text-to-text training of an encoder-decoder: translation, summarization, span corruption."""

import jax.numpy as jnp
import numpy as np

from flax_lm.data import pipeline, span_corruption
from flax_lm.metrics import generated_text_metrics
from flax_lm.tasks.base import Task, shapes
from flax_lm.tasks.causal_lm import CausalLM

SAMPLES = 3  # validation examples a finished run shows


class Seq2SeqLM(CausalLM):
    """Batch: `inputs` and `input_mask` (B x T int32, the encoder's side), `decoder_inputs`
    and `targets` (B x S int32, the targets shifted right behind the start token) and
    `weights` (B x S float32, 0 on target padding, which the loss ignores).

    Metrics of generated text (BLEU, chrF, ROUGE) need decoding, which an eval step cannot
    do; `generated_metrics` adds them to an evaluation. The loss weights and perplexity are
    those of `CausalLM`.
    """

    def loss(self, model, params, batch, *, rngs, deterministic):
        hidden_BxTxD, embedding_VxD = model.apply(
            {"params": params}, batch["inputs"], batch["decoder_inputs"], attention_mask_BxS=batch["input_mask"],
            deterministic=deterministic, rngs=rngs, return_hidden=True)
        return {"lm": self.cross_entropy(hidden_BxTxD, embedding_VxD, batch, deterministic)}, {}

    def target_len(self, cfg) -> int:
        """S, the target tokens of an example."""
        return pipeline.target_len(cfg)

    def batch_spec(self, cfg, batch_size):
        B, T, S = batch_size, pipeline.seq_len(cfg), self.target_len(cfg)
        return shapes({"inputs": ((B, T), jnp.int32), "input_mask": ((B, T), jnp.int32),
                       "decoder_inputs": ((B, S), jnp.int32), "targets": ((B, S), jnp.int32),
                       "weights": ((B, S), jnp.float32)})

    def generated_metrics(self, inference, dataset, names, count):
        """Each source decoded (greedy, or beam search with sample.num_beams > 1) and scored
        against its reference."""
        if not names:
            return {}
        hypotheses = inference.generate(dataset.source_ids(np.arange(count)))
        return generated_text_metrics(names, hypotheses, list(dataset.references[:count]))

    def predictions(self, inference, dataset):
        """Each source with the text generated for it."""
        outputs = inference.generate(dataset.source_ids(np.arange(len(dataset))))
        return [{"source": s, "output": o} for s, o in zip(dataset.sources, outputs)]

    def end_of_run_sample(self, inference, validation, prompt):
        """The first validation sources with their outputs and references, a block each."""
        count = min(SAMPLES, len(validation))
        outputs = inference.generate(validation.source_ids(np.arange(count)))
        return "samples:\n" + "\n".join(
            f"  source:    {source}\n  output:    {output}\n  reference: {reference}"
            for source, output, reference in zip(validation.sources, outputs, validation.references))


class SpanCorruption(Seq2SeqLM):
    """T5 pre-training: the batch of `Seq2SeqLM`, its targets the sentinels and the spans they
    stand for (`flax_lm.data.span_corruption`). The targets are no text to score or show."""

    generated_metrics = Task.generated_metrics
    end_of_run_sample = Task.end_of_run_sample

    def target_len(self, cfg) -> int:
        return span_corruption.lengths_for(pipeline.seq_len(cfg), cfg.data.noise_density,
                                           cfg.data.mean_noise_span_length)[1]
