"""From config to tokenizer and token splits, reusing what the workdir already has."""

from pathlib import Path

from flax_lm import init_from
from flax_lm import workdir as workdir_lib
from flax_lm.data import corpus, lm_data
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError


def prepare(cfg, workdir: Path, is_primary: bool = True):
    """Returns (tokenizer, Splits). The tokenizer is the workdir's (resume), else the
    configured file, else that of `train.init_from`, else one trained on the corpus; it is
    saved in the workdir."""
    documents = corpus.read_documents(cfg.data.source, cfg.data.max_bytes)
    saved = Path(workdir) / workdir_lib.TOKENIZER
    if saved.is_file():
        tokenizer = tokenizer_lib.load(saved)
    elif cfg.data.tokenizer:
        tokenizer = tokenizer_lib.load(cfg.data.tokenizer)
    elif cfg.train.init_from:
        tokenizer = init_from.tokenizer(cfg.train.init_from)
    else:
        tokenizer = tokenizer_lib.train_bpe(documents, cfg.model.vocab_size)
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size is "
            f"{cfg.model.vocab_size}; raise model.vocab_size")
    if is_primary and not saved.is_file():
        tokenizer.save(str(saved))
    splits = lm_data.tokenize_and_split(documents, tokenizer, cfg.data.validation_fraction, cfg.model.max_len)
    return tokenizer, splits
