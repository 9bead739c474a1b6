"""English -> German translation on Multi30k (29,000 caption pairs), a t5_tiny-class encoder-decoder
trained from scratch: 3 + 3 layers, d_model 256, 4 heads, d_ff 1024, a shared 8,000-piece Unigram
vocabulary, dropout 0.1, Adafactor and label smoothing 0.1. Evaluations report BLEU and chrF (sacrebleu) of
greedy translations.

From a pre-trained T5 instead, set --config.train.init_from=DIR and
--config.data.source_prefix="translate English to German: " as T5 was trained. Data paths
default to the project's shared data (prefixes of the parallel files NAME.en / NAME.de).
"""

from pathlib import Path

from flax_lm.config import defaults

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def get_config():
    c = defaults.get_config()
    c.task = "seq2seq"
    c.model.update(family="t5", vocab_size=8000, max_len=64, d_model=256, n_layers=3, n_decoder_layers=3,
                   n_heads=4, d_ff=1024, feed_forward="relu", dropout=0.1, relative_attention_num_buckets=32,
                   relative_attention_max_distance=64)
    c.data.update(train=str(DATA / "train"), validation=str(DATA / "val"), test=str(DATA / "test"),
                  source_field="en", target_field="de", seq_len=64, target_len=64, too_long="truncate",
                  extra_ids=0)
    c.train.update(steps=2400, batch_size=64, eval_every=1200, eval_batches=0, checkpoint_every=600, log_every=50,
                   generate_metrics="bleu,chrf", best_metric="bleu")
    # Adafactor, as T5 trains: its steps are relative to each weight, so T5's small attention weights and
    # unit-variance embeddings move alike (AdamW at 7e-4 reached 10 validation BLEU at step 1,200; this, 24).
    c.optim.update(optimizer="adafactor", learning_rate=1e-2, warmup_steps=300, schedule="cosine", min_lr_ratio=0.02,
                   weight_decay=0.0)
    c.train.label_smoothing = 0.1
    c.sample.update(temperature=0.0, max_new_tokens=64)
    return c
