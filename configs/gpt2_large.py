"""GPT-2 large (774M parameters) at context 1024, for a TPU slice or several GPUs: parameters
and optimizer state sharded over all data-parallel devices (FSDP), matmul outputs kept for
the backward pass and the rest recomputed."""

from flax_lm import defaults


def get_config():
    c = defaults.get_config()
    c.model.update(vocab_size=50257, max_len=1024, d_model=1280, n_layers=36, n_heads=20,
                   dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch")
    c.parallel.update(data=1, fsdp=-1)
    c.train.update(steps=300_000, batch_size=512, eval_every=2000, eval_batches=50, checkpoint_every=2000,
                   log_every=50)
    c.optim.update(learning_rate=2.5e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.1,
                   weight_decay=0.1, b2=0.95)
    return c
