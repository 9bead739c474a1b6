"""BERT-base pre-training (110M parameters: 12 layers, d_model 768, 12 heads), masked LM + NSP,
as Devlin et al. (2019): sequences of 128, batch 256, lr 1e-4 with 10k warmup steps."""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "masked_lm"
    c.model.update(family="bert", vocab_size=30522, max_len=512, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                   dropout=0.1, dtype="bfloat16", scan_layers=True)
    c.data.update(nsp=True, lowercase=True, max_predictions=20)
    c.train.update(steps=1_000_000, batch_size=256, eval_every=10_000, checkpoint_every=10_000, log_every=100)
    c.optim.update(learning_rate=1e-4, warmup_steps=10_000, schedule="linear", min_lr_ratio=0.0, b2=0.999,
                   weight_decay=0.01)
    return c
