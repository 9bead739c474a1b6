"""BERT pre-training (masked LM + next-sentence prediction) small enough for minutes on a CPU:
4 layers, d_model 256 (the size of Google's BERT-mini), sequences of 128 tokens."""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "masked_lm"
    c.model.update(family="bert", vocab_size=8192, max_len=128, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                   dropout=0.1)
    c.data.update(nsp=True, lowercase=True)
    c.train.update(steps=600, batch_size=64, eval_every=200, eval_batches=8, checkpoint_every=200, log_every=20)
    c.optim.update(learning_rate=1e-3, warmup_steps=60, schedule="linear", min_lr_ratio=0.0, b2=0.98,
                   weight_decay=0.01)
    return c
