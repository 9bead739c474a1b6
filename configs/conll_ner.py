"""Fine-tuning an encoder for named-entity recognition on CoNLL-2003 (BIO tags over PER, ORG, LOC,
MISC): start from a pre-trained encoder with --config.train.init_from=SOURCE.

Data paths default to the project's shared data; point data.train/validation/test elsewhere.
"""

from pathlib import Path

from flax_lm.config import defaults

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def get_config():
    c = defaults.get_config()
    c.task = "token_classification"
    c.model.update(family="bert", vocab_size=8192, max_len=128, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                   dropout=0.1)
    c.data.update(seq_len=128, train=str(DATA / "train.txt"), validation=str(DATA / "dev.txt"),
                  test=str(DATA / "test.txt"), tag_column=-1, lowercase=False)
    c.train.update(steps=1500, batch_size=32, eval_every=250, eval_batches=0, checkpoint_every=250, log_every=50,
                   best_metric="f1", early_stopping_patience=4)
    c.optim.update(learning_rate=1e-4, warmup_steps=150, schedule="linear", min_lr_ratio=0.0, b2=0.999,
                   weight_decay=0.01)
    return c
