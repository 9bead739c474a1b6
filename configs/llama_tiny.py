"""A small Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention) on the embedded
corpus (Python stdlib sources): gpt2_tiny's job with the modern option set.

Trains on a 2-core CPU in minutes; `--config.train.steps=20` is a seconds-long smoke run.
"""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    # d_ff 384 is 3 * d_model: SwiGLU's three matrices then hold as many weights as a 4 * d_model GELU MLP
    c.model.update(family="llama", vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                   d_ff=384)
    c.train.update(steps=400, batch_size=32, eval_every=100, checkpoint_every=100, log_every=10)
    c.optim.update(learning_rate=3e-3, warmup_steps=40, schedule="cosine")
    c.sample.update(temperature=0.7)
    return c
