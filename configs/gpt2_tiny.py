"""The default job: a small GPT-2 on the embedded corpus (Python stdlib sources).

Finishes in about 4 minutes on a 2-core CPU.
"""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.model.update(vocab_size=2048, max_len=128, d_model=192, n_layers=4, n_heads=6)
    c.train.update(steps=400, batch_size=32, eval_every=100, checkpoint_every=100, log_every=10)
    c.optim.update(learning_rate=3e-3, warmup_steps=40, schedule="cosine")
    c.sample.update(temperature=0.7)
    return c
