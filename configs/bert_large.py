"""BERT-large pre-training (340M parameters: 24 layers, d_model 1024, 16 heads), masked LM + NSP,
with whole-word masking; remat keeps activations within one accelerator's memory."""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "masked_lm"
    c.model.update(family="bert", vocab_size=30522, max_len=512, d_model=1024, n_layers=24, n_heads=16, d_ff=4096,
                   dropout=0.1, dtype="bfloat16", scan_layers=True,
                   remat_policy="dots_no_batch")
    c.data.update(nsp=True, lowercase=True, max_predictions=20, whole_word_masking=True)
    c.train.update(steps=1_000_000, batch_size=256, eval_every=10_000, checkpoint_every=10_000, log_every=100)
    c.optim.update(learning_rate=1e-4, warmup_steps=10_000, schedule="linear", min_lr_ratio=0.0, b2=0.999,
                   weight_decay=0.01)
    return c
