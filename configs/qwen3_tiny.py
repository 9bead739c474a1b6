"""A small Qwen3-style decoder (llama_tiny's option set plus per-head q/k RMSNorm, a head size of
its own) on the embedded corpus (Python stdlib sources).

Trains on a 2-core CPU in minutes; `--config.train.steps=20` is a seconds-long smoke run.
"""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    # head_dim 48 with 4 heads: query/output projections of 192 on a 128-wide stream, as Qwen3 sizes differ
    c.model.update(family="qwen3", vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                   head_dim=48, d_ff=384, tie_word_embeddings=True)
    c.train.update(steps=400, batch_size=32, eval_every=100, checkpoint_every=100, log_every=10)
    c.optim.update(learning_rate=3e-3, warmup_steps=40, schedule="cosine")
    c.sample.update(temperature=0.7)
    return c
