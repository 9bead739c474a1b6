"""T5's tokenizer: a SentencePiece-style Unigram model with T5's ids, trained with `tokenizers`.

Ids are laid out as in every released T5 vocabulary: `<pad>` 0 (also the decoder's start
token), `</s>` 1, `<unk>` 2, the learned pieces, then the sentinels `<extra_id_{n-1}>` ..
`<extra_id_0>`, so that `<extra_id_0>` is the last id. The pipeline is the one transformers
builds for T5 (NFKC, whitespace split, Metaspace `▁` pieces, `$A </s>` post-processing), so a
saved tokenizer.json gives the same ids in `transformers.PreTrainedTokenizerFast`.
"""

import json

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from flax_lm.errors import UserError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
_SCORE_DECIMALS = 6   # of a piece's log-probability (about float32's precision at -10)
_FILLER_STEP = 1e-4   # the tokenizers trainer's score step between the characters it adds last


def sentinel(i: int) -> str:
    """The name of sentinel i: `<extra_id_{i}>` (i = 0 replaces a corrupted input's first span)."""
    return f"<extra_id_{i}>"


def train_unigram(texts: list[str], vocab_size: int, extra_ids: int = 100) -> Tokenizer:
    """A Unigram tokenizer of at most `vocab_size` ids trained on `texts`, laid out as T5's (module docstring).

    The trainer learns at most vocab_size - extra_ids entries (3 specials and the pieces); on a
    small corpus it may stop earlier, and then the whole vocabulary is smaller than vocab_size,
    still with `<extra_id_0>` last (`sentinel_ids` finds the sentinels by name either way).
    """
    if extra_ids < 0 or vocab_size - extra_ids < 4:
        raise UserError(f"a vocabulary of {vocab_size} ids cannot hold 3 special tokens, {extra_ids} sentinels "
                        f"(data.extra_ids) and any piece; raise model.vocab_size")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - extra_ids, special_tokens=[PAD, EOS, UNK], unk_token=UNK, show_progress=False)
    trained = _t5_pipeline(Tokenizer(models.Unigram()))
    trained.train_from_iterator(texts, trainer=trainer)
    pieces = _pieces(trained)
    # Sentinels belong to the model's vocabulary (score 0, as transformers' T5 converter puts them)
    # and are also special tokens, so that text holding "<extra_id_0>" maps to that one id.
    names = [sentinel(i) for i in range(extra_ids - 1, -1, -1)]
    tokenizer = _t5_pipeline(Tokenizer(models.Unigram(pieces + [(name, 0.0) for name in names], unk_id=2)))
    tokenizer.add_special_tokens([PAD, EOS, UNK, *names])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)])
    return tokenizer


def _t5_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """NFKC (SentencePiece's nmt_nfkc, less its control-character rules), then transformers' T5
    pre-tokenizer and decoder: runs of whitespace are one word break, each word starts with `▁`."""
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tokenizer


def _pieces(tokenizer: Tokenizer) -> list[tuple[str, float]]:
    """The (piece, log-probability) entries of a trained Unigram model: the specials, then the
    learned pieces by decreasing score, the same for the same texts (see `_canonical`)."""
    # The scores are reachable only through the serialized model.
    pieces = [(piece, float(score)) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]
    if [p for p, _ in pieces[:3]] != [PAD, EOS, UNK]:
        raise AssertionError(f"the Unigram trainer did not put the specials first: {pieces[:3]}")
    return pieces[:3] + _canonical(pieces[3:])


def _canonical(learned: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """`learned` made independent of the trainer's thread and hash-map order.

    Two things vary from run to run on the same texts: scores in their last bits (1e-15; the
    threads sum in varying order), and which of the characters the trainer appends with made-up
    scores min, min + 1e-4, min + 2e-4, ... gets which score (it walks a hash set). The scores
    are rounded to float32-like precision (SentencePiece stores float32), those characters take
    their scores in code-point order, and ties sort by piece, so the same texts give the same ids.
    """
    if not learned:
        return []
    low = min(score for _, score in learned)
    filler, k = [], 0
    while True:
        at_k = [i for i, (piece, score) in enumerate(learned)
                if len(piece) == 1 and abs(score - (low + k * _FILLER_STEP)) < 1e-9]
        if not at_k:
            break
        filler += at_k
        k += 1
    chars = sorted(learned[i][0] for i in filler)
    scores = sorted(learned[i][1] for i in filler)
    fixed = dict(zip(chars, scores))
    rounded = [(piece, round(fixed.get(piece, score), _SCORE_DECIMALS)) for piece, score in learned]
    return sorted(rounded, key=lambda entry: (-entry[1], entry[0]))


def special_ids(tokenizer: Tokenizer) -> tuple[int, int, int]:
    """(pad, eos, unk) ids of a T5-style tokenizer; a UserError when it lacks one (e.g. a GPT-2 or BERT one)."""
    ids = [tokenizer.token_to_id(name) for name in (PAD, EOS, UNK)]
    missing = [name for name, token_id in zip((PAD, EOS, UNK), ids) if token_id is None]
    if missing:
        raise UserError(f"the tokenizer lacks {' '.join(missing)}; an encoder-decoder (T5) needs {PAD} {EOS} {UNK}: "
                        f"leave data.tokenizer empty to train one, or give a T5 tokenizer.json")
    return tuple(ids)


def sentinel_ids(tokenizer: Tokenizer, n: int) -> np.ndarray:
    """(n,) int32 ids of `<extra_id_0>` .. `<extra_id_{n-1}>`, in that order; a UserError when one is missing."""
    ids = [tokenizer.token_to_id(sentinel(i)) for i in range(n)]
    if None in ids:
        first = ids.index(None)
        raise UserError(f"{n} sentinel tokens are wanted (data.extra_ids) but the tokenizer has no {sentinel(first)}; "
                        f"lower data.extra_ids or use a tokenizer with that many (leave data.tokenizer empty to "
                        f"train one)")
    return np.asarray(ids, np.int32)
