"""BERT's WordPiece tokenizer: trained with `tokenizers`, or loaded from a BERT vocab.txt.

The pipeline is BERT's own (BertNormalizer, BertPreTokenizer, WordPiece with `##`
continuations, `[CLS] A [SEP] B [SEP]` post-processing), so a saved tokenizer.json, or
a vocab.txt written from the vocabulary, tokenizes identically in `transformers.BertTokenizerFast`.
"""

from pathlib import Path
from typing import NamedTuple

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers.implementations import BertWordPieceTokenizer

from flax_lm.data import input_files
from flax_lm.errors import UserError

# In this order so that [PAD] is id 0, as in every released BERT vocabulary.
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")


class SpecialTokens(NamedTuple):
    """Ids of the tokens masked-LM data needs."""
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def train_wordpiece(documents: list[str], vocab_size: int, lowercase: bool) -> Tokenizer:
    """Trains a BERT WordPiece tokenizer with at most `vocab_size` entries on `documents`.

    `lowercase` selects uncased (lowercase and strip accents, as bert-base-uncased) or cased
    (neither, as bert-base-cased). Ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]. The same
    documents always give the same vocabulary (see `_continuations`).
    """
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[*BERT_SPECIALS, *_continuations(documents, normalizer)],
        continuing_subword_prefix="##", show_progress=False)
    trained = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##")),
                             normalizer)
    trained.train_from_iterator(documents, trainer=trainer)
    # The continuations were special only to fix their ids; in the tokenizer they are plain pieces.
    tokenizer = _bert_pipeline(
        Tokenizer(models.WordPiece(trained.get_vocab(), unk_token="[UNK]", continuing_subword_prefix="##")),
        normalizer)
    tokenizer.add_special_tokens(list(BERT_SPECIALS))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def _bert_pipeline(tokenizer: Tokenizer, normalizer) -> Tokenizer:
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _continuations(documents: list[str], normalizer) -> list[str]:
    """`##c` for every character c of the normalized documents, in sorted order.

    The `tokenizers` trainer creates these pieces in hash-map order, which changes from run
    to run; their ids break ties between equally frequent merges, so the same text could give
    different vocabularies (huggingface/tokenizers#1794). Declared up front, they get fixed ids.
    """
    chars = set()
    for document in documents:
        chars.update(normalizer.normalize_str(document))
    return ["##" + c for c in sorted(c for c in chars if not c.isspace())]


def load_vocab(path: str | Path, lowercase: bool) -> Tokenizer:
    """The BERT tokenizer of a `vocab.txt` (one token a line, the line number is the id).

    `lowercase` must match how the vocabulary was made (True for *-uncased checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"vocabulary file {str(path)!r} does not exist; give the vocab.txt of a BERT checkpoint")
    # Lines as the `tokenizers` WordPiece reader takes them: split at \n, trailing whitespace dropped.
    tokens = [line.rstrip() for line in input_files.read_text(path).split("\n")]
    if tokens[-1] == "":   # the end of the last line, not a token
        tokens.pop()
    # A repeated token leaves its first id unused, so the largest id would reach past get_vocab_size().
    first_line = {}
    for line, token in enumerate(tokens, 1):
        if token in first_line:
            raise UserError(f"{path}:{line}: the token {token!r} is already on line {first_line[token]}; "
                            f"a vocab.txt lists each token once")
        first_line[token] = line
    # BertWordPieceTokenizer needs these for its post-processor and would fail with a bare TypeError.
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in first_line]
    if missing:
        raise UserError(f"vocabulary file {str(path)!r} is not a BERT vocab.txt: it lacks {' '.join(missing)}")
    vocab = {token: line - 1 for token, line in first_line.items()}
    return BertWordPieceTokenizer(vocab, lowercase=lowercase)._tokenizer


def special_tokens(tokenizer: Tokenizer) -> SpecialTokens:
    """The pad/unk/cls/sep/mask ids of a BERT ([PAD] ...) or RoBERTa-style (<pad> ...) vocabulary."""
    families = [[tokenizer.token_to_id(t) for t in names] for names in (BERT_SPECIALS, ROBERTA_SPECIALS)]
    # The family with more of its tokens present is the one meant; its gaps are what to report.
    best = max(range(2), key=lambda f: (sum(i is not None for i in families[f]), -f))
    ids, names = families[best], (BERT_SPECIALS, ROBERTA_SPECIALS)[best]
    missing = [name for name, token_id in zip(names, ids) if token_id is None]
    if missing:
        raise UserError(
            f"the tokenizer lacks the special tokens {' '.join(missing)} that masked-LM training needs; use a "
            f"vocabulary with all of {' '.join(BERT_SPECIALS)} (BERT) or {' '.join(ROBERTA_SPECIALS)} (RoBERTa)")
    return SpecialTokens(*ids)


def special_token_names(tokenizer: Tokenizer) -> SpecialTokens:
    """The same tokens as `special_tokens`, as strings (for tokenizer_config.json)."""
    return SpecialTokens(*(tokenizer.id_to_token(i) for i in special_tokens(tokenizer)))
