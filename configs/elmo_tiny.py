"""A small ELMo (character CNN, two-layer biLSTM with projections) pre-trained as a forward and
backward LM on the embedded corpus; fine-tune it with configs/conll_ner_elmo.py.

ELMo's original sizes are d_model=512 (projection), d_ff=4096 (LSTM cells), filters up to 2048.
"""

from flax_lm.config import defaults


def get_config():
    c = defaults.get_config()
    c.task = "causal_lm"
    c.model.update(family="elmo", vocab_size=4096, max_len=64, d_model=128, n_layers=2, d_ff=512, dropout=0.1,
                   elmo_char_dim=16, elmo_filters="1:32,2:32,3:64,4:128,5:128", elmo_highway_layers=1,
                   elmo_max_chars=20)
    c.data.update(lowercase=False)   # ELMo is cased: capitals matter for names
    c.train.update(steps=400, batch_size=32, eval_every=100, checkpoint_every=100, log_every=10)
    c.optim.update(learning_rate=2e-3, warmup_steps=40, schedule="cosine", weight_decay=0.01)
    return c
