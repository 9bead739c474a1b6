"""Shared recipe builders, for config families that differ only in size."""

from flax_lm.config import defaults


def gpt2_openwebtext(steps: int, grad_accum_steps: int, learning_rate: float):
    """GPT-2's pre-training schedule for a single GPU or data-parallel GPUs: 480 sequences a step,
    warmup 2,000 then cosine decay to a tenth, AdamW with weight decay 0.1 and b2 0.95. The
    caller sets the model section."""
    c = defaults.get_config()
    c.train.update(steps=steps, batch_size=480, grad_accum_steps=grad_accum_steps, eval_every=2000, eval_batches=50,
                   checkpoint_every=2000, log_every=50)
    c.optim.update(learning_rate=learning_rate, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.1,
                   weight_decay=0.1, b2=0.95)
    return c


def gpt2_fsdp(d_model: int, n_layers: int, n_heads: int, remat_policy: str, learning_rate: float):
    """A GPT-2 size (50,257 tokens, context 1024) for a TPU slice or several GPUs: bf16 compute,
    layers scanned, `remat_policy` in the backward pass, parameters and optimizer state sharded
    over all data-parallel devices (FSDP), 512 sequences a step."""
    c = defaults.get_config()
    c.model.update(vocab_size=50257, max_len=1024, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                   dtype="bfloat16", scan_layers=True, remat_policy=remat_policy)
    c.parallel.update(data=1, fsdp=-1)
    c.train.update(steps=300_000, batch_size=512, eval_every=2000, eval_batches=50, checkpoint_every=2000,
                   log_every=50)
    c.optim.update(learning_rate=learning_rate, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.1,
                   weight_decay=0.1, b2=0.95)
    return c


def gpt3(n_layers: int, d_model: int, n_heads: int, batch_size: int, learning_rate: float, tensor: int = 1):
    """A GPT-3 model of Brown et al. 2020, table 2.1: context 2048, bf16 compute, layers scanned
    and fully recomputed in the backward pass, parameters and optimizer state sharded over the
    data-parallel devices (FSDP), `tensor`-way tensor parallelism. The vocabulary is GPT-2's
    50,257 tokens padded to 50,304 (a multiple of 128), so that the embedding divides over devices."""
    c = defaults.get_config()
    c.model.update(vocab_size=50304, max_len=2048, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                   dtype="bfloat16", scan_layers=True, remat_policy="full")
    c.parallel.update(data=1, fsdp=-1, tensor=tensor)
    c.train.update(steps=300_000, batch_size=batch_size, eval_every=2000, eval_batches=50, checkpoint_every=2000,
                   log_every=50)
    c.optim.update(learning_rate=learning_rate, warmup_steps=375, schedule="cosine", min_lr_ratio=0.1,
                   weight_decay=0.1, b2=0.95)
    return c


def t5_span_corruption(d_model: int, n_layers: int, n_heads: int, d_ff: int, scan_layers: bool):
    """A T5 size of Raffel et al. (2020) pre-trained by span corruption: 32,128 tokens (100 of them
    sentinels), heads of 64, ReLU feed-forward, tied embeddings, inputs of 512 tokens with 15% noise
    in spans of mean length 3, dropout 0.1, bf16 compute, 128 sequences a step. AdamW stands in
    for Adafactor."""
    c = defaults.get_config()
    c.task = "span_corruption"
    c.model.update(family="t5", vocab_size=32128, max_len=512, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                   head_dim=64, d_ff=d_ff, feed_forward="relu", dropout=0.1, dtype="bfloat16", scan_layers=scan_layers)
    c.data.update(seq_len=512, extra_ids=100)
    c.train.update(steps=524_288, batch_size=128, eval_every=5000, eval_batches=20, checkpoint_every=5000,
                   log_every=100)
    c.optim.update(learning_rate=1e-3, warmup_steps=10_000, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.0)
    c.sample.update(temperature=0.0, max_new_tokens=128)
    return c
