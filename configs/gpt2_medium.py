"""GPT-2 medium (355M parameters) at context 1024."""

from flax_lm import defaults


def get_config():
    c = defaults.get_config()
    c.model.update(vocab_size=50257, max_len=1024, d_model=1024, n_layers=24, n_heads=16,
                   dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch")
    c.train.update(steps=400_000, batch_size=480, grad_accum_steps=2, eval_every=2000, eval_batches=50,
                   checkpoint_every=2000, log_every=50)
    c.optim.update(learning_rate=3e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.1,
                   weight_decay=0.1, b2=0.95)
    return c
