"""A tiny T5 pre-trained by span corruption on the embedded corpus (no download): 2 encoder and
2 decoder layers, d_model 128, ReLU feed-forward, tied embeddings. CPU minutes."""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "span_corruption"
    c.model.update(family="t5", vocab_size=2048, max_len=128, d_model=128, n_layers=2, n_heads=4, d_ff=512)
    c.data.update(seq_len=128, noise_density=0.15, mean_noise_span_length=3.0, extra_ids=100)
    c.train.update(steps=300, batch_size=32, eval_every=100, checkpoint_every=100, log_every=10)
    c.optim.update(learning_rate=3e-3, warmup_steps=30, schedule="cosine", weight_decay=0.0)
    c.sample.update(temperature=0.0, max_new_tokens=32)
    return c
