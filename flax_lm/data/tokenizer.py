"""Byte-level BPE tokenizers, trained with `tokenizers` and saved as tokenizer.json.

The saved file loads in `transformers.PreTrainedTokenizerFast(tokenizer_file=...)`.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from flax_lm.errors import UserError

# the name of a run's tokenizer in its workdir (the data layer saves it there the first time)
FILE = "tokenizer.json"
EOS = "<|endoftext|>"
END_TOKENS = (EOS, "<|end_of_text|>", "</s>")


def train_bpe(documents: list[str], vocab_size: int) -> Tokenizer:
    """Trains a GPT-2 style byte-level BPE with `vocab_size` entries (EOS is id 0)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def load(path: str | Path) -> Tokenizer:
    """Loads a tokenizer.json; a missing or unreadable file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {str(path)!r} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception on bad JSON
        raise UserError(f"tokenizer file {str(path)!r} cannot be read: {e}") from None


def eos_id(tokenizer: Tokenizer) -> int:
    """The end-of-text id that separates documents: GPT-2's token (every tokenizer trained here has
    it), else that of an imported Llama 3 or Llama 2 / Mistral tokenizer."""
    for token in END_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise UserError(f"the tokenizer has no end-of-text token ({', '.join(END_TOKENS)}) to separate documents")
