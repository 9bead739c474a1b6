"""ModernBERT masked-LM pre-training small enough for minutes on a CPU: 4 layers of d_model 128
(layers 0 and 3 global, 1 and 2 local with a window of 32 on 128-token sequences), GeGLU,
rotary positions, no biases, on the embedded corpus with a WordPiece tokenizer trained here.

`--config.train.steps=20` is a seconds-long smoke run.
"""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "masked_lm"
    c.model.update(family="modernbert", vocab_size=4096, max_len=128, d_model=128, n_layers=4, n_heads=4, d_ff=192,
                   local_attention=32, global_attn_every_n_layers=3)
    c.data.update(nsp=False, mask_prob=0.3)   # ModernBERT pre-trains with 30% masking
    c.train.update(steps=400, batch_size=32, eval_every=100, eval_batches=8, checkpoint_every=100, log_every=10)
    c.optim.update(learning_rate=2e-3, warmup_steps=40, schedule="linear", min_lr_ratio=0.0, b2=0.98,
                   weight_decay=0.01)
    return c
