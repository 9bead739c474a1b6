"""Named-entity recognition on CoNLL-2003 from a pre-trained ELMo (configs/elmo_tiny.py): the learned
scalar mix of its layers feeds a biLSTM tagger. Start it with --config.train.init_from=ELMO_WORKDIR;
the ELMo weights stay frozen unless --config.model.elmo_frozen=False.

Data paths default to the project's shared data; point data.train/validation/test elsewhere.
"""

from pathlib import Path

from flax_lm.config import defaults

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def get_config():
    c = defaults.get_config()
    c.task = "token_classification"
    c.model.update(family="elmo", dropout=0.1, elmo_frozen=True)   # the architecture comes from init_from
    c.data.update(seq_len=64, train=str(DATA / "train.txt"), validation=str(DATA / "dev.txt"),
                  test=str(DATA / "test.txt"), tag_column=-1, lowercase=False)
    c.train.update(steps=1000, batch_size=32, eval_every=250, eval_batches=0, checkpoint_every=250, log_every=50,
                   best_metric="f1", early_stopping_patience=4)
    c.optim.update(learning_rate=3e-3, warmup_steps=50, schedule="linear", min_lr_ratio=0.0, b2=0.999,
                   weight_decay=0.0)
    return c
