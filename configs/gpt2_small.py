"""GPT-2 small (124M parameters), the GPT-2 paper's smallest model, at context 1024.

Point data.source at real text (and a 50257-token tokenizer.json via data.tokenizer
for the original vocabulary) for a real pre-training run.
"""

from flax_lm import defaults


def get_config():
    c = defaults.get_config()
    c.model.update(vocab_size=50257, max_len=1024, d_model=768, n_layers=12, n_heads=12,
                   dtype="bfloat16", scan_layers=True, remat_policy="none")
    c.train.update(steps=600_000, batch_size=480, grad_accum_steps=1, eval_every=2000, eval_batches=50,
                   checkpoint_every=2000, log_every=50)
    c.optim.update(learning_rate=6e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.1,
                   weight_decay=0.1, b2=0.95)
    return c
