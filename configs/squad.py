"""Fine-tuning an encoder for extractive question answering on SQuAD v1.1 JSON files:
set data.train and data.validation, and start from a pre-trained encoder with
--config.train.init_from=SOURCE."""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "question_answering"
    c.model.update(family="bert", vocab_size=8192, max_len=384, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                   dropout=0.1)
    c.data.update(doc_stride=128, max_query_len=64)
    c.train.update(steps=5000, batch_size=32, eval_every=1000, eval_batches=0, checkpoint_every=1000, log_every=50,
                   best_metric="f1")
    c.optim.update(learning_rate=5e-5, warmup_steps=500, schedule="linear", min_lr_ratio=0.0, b2=0.999,
                   weight_decay=0.01)
    return c
