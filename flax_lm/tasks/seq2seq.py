"""Text-to-text training of an encoder-decoder: translation, summarization, span corruption."""

from flax_lm.tasks.causal_lm import CausalLM


class Seq2SeqLM(CausalLM):
    """Batch: `inputs` and `input_mask` (B x S int32, the encoder's side), `decoder_inputs`
    and `targets` (B x T int32, the targets shifted right behind the start token) and
    `weights` (B x T float32, 0 on target padding, which the loss ignores).

    Metrics of generated text (BLEU, chrF, ROUGE) need decoding, which an eval step cannot
    do; `flax_lm.training.seq2seq_eval` adds them to an evaluation. The loss weights and perplexity are
    those of `CausalLM`.
    """

    def loss(self, model, params, batch, *, rngs, deterministic):
        hidden_BxTxD, embedding_VxD = model.apply(
            {"params": params}, batch["inputs"], batch["decoder_inputs"], attention_mask_BxS=batch["input_mask"],
            deterministic=deterministic, rngs=rngs, return_hidden=True)
        return {"lm": self.cross_entropy(hidden_BxTxD, embedding_VxD, batch, deterministic)}, {}
