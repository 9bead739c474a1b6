"""Fine-tuning an encoder on SST-2 (binary sentiment, GLUE): start from a pre-trained encoder with
--config.train.init_from=SOURCE (an HF directory such as all-MiniLM-L6-v2, or a flax_lm workdir).

Data paths default to the project's shared data; point data.train/validation/test elsewhere.
"""

from pathlib import Path

from flax_lm.config import defaults

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def get_config():
    c = defaults.get_config()
    c.task = "classification"
    c.model.update(family="bert", vocab_size=8192, max_len=64, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                   dropout=0.1)
    c.data.update(seq_len=64, train=str(DATA / "train.tsv"), validation=str(DATA / "dev.tsv"),
                  test=str(DATA / "test.tsv"), text_column="sentence", label_column="label")
    c.train.update(steps=2000, batch_size=32, eval_every=250, eval_batches=0, checkpoint_every=250, log_every=50,
                   best_metric="accuracy", early_stopping_patience=4)
    c.optim.update(learning_rate=1e-4, warmup_steps=200, schedule="linear", min_lr_ratio=0.0, b2=0.999,
                   weight_decay=0.01, layer_decay=0.9)
    return c
