"""Token classification (NER) data in CoNLL format: one word a line, tag in a chosen column.

Blank lines separate sentences; `-DOCSTART-` lines are skipped. Models see sub-words, metrics
need words: a word's tag is learned and predicted on its FIRST sub-word only, and
`TokenClassificationDataset.word_predictions` maps token predictions back to one tag per word.
"""

import dataclasses
import re
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import input_files, length_buckets
from flax_lm.data.dataset import encoder_batch
from flax_lm.errors import UserError

_COLUMN_SEPARATOR = re.compile(r"[ \t]+")   # not str.split(): a no-break space inside a word is not a separator


@dataclasses.dataclass
class Sentence:
    """Words and their tags, and where the sentence starts ("path:line") for error messages."""

    words: list[str]
    tags: list[str]
    where: str = ""


def read_conll(path: str | Path, tag_column: int | None = -1, skip_bad_records: bool = False) -> list[Sentence]:
    """Sentences of a CoNLL file: word in column 0, tag in `tag_column` (Python index, -1 = last).
    With `tag_column` None only the words are read (text to label), and every tag is "O".

    Every word line must have the same number of columns; a line with too few or a different
    count (or with bytes that are not UTF-8) is a UserError "{path}:{lineno}: ...", as is a file
    without sentences. With `skip_bad_records` the sentences that hold such lines are left out
    and reported in one line instead (`input_files.BadRecords`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CoNLL file {str(path)!r} does not exist")
    if tag_column == 0:
        raise UserError(f"{path}: tag column 0 is the word column; give the tag's column (-1 = last)")
    needed = 1 if tag_column is None else tag_column + 1 if tag_column > 0 else 1 - tag_column
    bad = input_files.BadRecords(path, skip_bad_records, "sentence")
    sentences, words, tags, start, n_columns, broken = [], [], [], 0, None, False
    for lineno, line in input_files.lines(input_files.read_text_keeping_bad_bytes(path)):
        fields = _COLUMN_SEPARATOR.split(line.strip())
        if not line.strip() or fields[0] == "-DOCSTART-":
            if words and not broken:
                sentences.append(Sentence(words, tags, f"{path}:{start}"))
            words, tags, broken = [], [], False
            continue
        problem = input_files.not_utf8(line)
        if n_columns is None and len(fields) < needed:
            problem = (f"{len(fields)} column(s), need at least {needed} (word first, tag in column {tag_column}); "
                       f"is this a CoNLL file with one word and its tag a line?")
        elif n_columns is not None and len(fields) != n_columns:
            problem = (f"{len(fields)} column(s) where earlier lines have {n_columns}; "
                       f"fix the line (a word with a space in it?)")
        if problem:
            if not broken:   # one count per sentence, at its first bad line
                bad.found(lineno, problem)
            broken = True
            continue
        n_columns = n_columns or len(fields)
        if not words:
            start = lineno
        words.append(fields[0])
        tags.append("O" if tag_column is None else fields[tag_column])
    if words and not broken:
        sentences.append(Sentence(words, tags, f"{path}:{start}"))
    if not sentences:
        bad.report(kept=0)
        raise UserError(f"{path}: has no sentences; expected one word and its tag a line, blank lines between")
    bad.report(kept=len(sentences))
    return sentences


def tag_names(sentences: list[Sentence]) -> list[str]:
    """The tag set in id order: "O" first (id 0, also what padding and cut words mean), the rest sorted."""
    names = sorted({tag for sentence in sentences for tag in sentence.tags})
    return (["O"] + [n for n in names if n != "O"]) if "O" in names else names


class TokenClassificationDataset:
    """Sentences encoded as pre-tokenized words, truncated and padded to max_len.

    batch(): input_ids, token_type_ids, attention_mask (B, T) int32; labels (B, T) int32, the word's tag id
    on each word's first sub-word and 0 elsewhere; label_weights (B, T) float32, 1 on those first sub-words;
    weights (B,) float32 ones. With `dynamic_padding`, `padding` lets the loop cut batches to
    their longest sentence (`length_buckets`).
    """

    def __init__(self, sentences: list[Sentence], tokenizer: Tokenizer, max_len: int, pad_id: int,
                 tag_names: list[str], dynamic_padding: bool = False):
        self.sentences, self.tag_names = sentences, list(tag_names)
        tag_ids = {tag: i for i, tag in enumerate(self.tag_names)}
        encoder = Tokenizer.from_str(tokenizer.to_str())   # a copy: the caller's truncation/padding stay as they were
        encoder.enable_truncation(max_length=max_len)
        encoder.enable_padding(length=max_len, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
        encodings = encoder.encode_batch([s.words for s in sentences], is_pretokenized=True)

        n = len(sentences)
        self.input_ids = np.zeros((n, max_len), np.int32)
        self.token_type_ids = np.zeros((n, max_len), np.int8)
        self.attention_mask = np.zeros((n, max_len), np.int8)
        self.labels = np.zeros((n, max_len), np.int32)
        self.label_weights = np.zeros((n, max_len), np.float32)
        # per sentence: (words,) position of each word's first sub-word, -1 if cut
        self.first_token: list[np.ndarray] = []
        for i, (sentence, encoding) in enumerate(zip(sentences, encodings)):
            unknown = [tag for tag in sentence.tags if tag not in tag_ids]
            if unknown:
                raise UserError(
                    f"{sentence.where}: tag {unknown[0]!r} is not one of the training tags {self.tag_names}")
            self.input_ids[i], self.token_type_ids[i], self.attention_mask[i] = (
                encoding.ids, encoding.type_ids, encoding.attention_mask)
            word_T = np.asarray([-1 if w is None else w for w in encoding.word_ids])
            is_first_T = (word_T >= 0) & (word_T != np.concatenate([[-1], word_T[:-1]]))
            positions = np.flatnonzero(is_first_T)
            first = np.full(len(sentence.words), -1)
            first[word_T[positions]] = positions
            self.first_token.append(first)
            self.labels[i, positions] = [tag_ids[sentence.tags[w]] for w in word_T[positions]]
            self.label_weights[i, positions] = 1.0
        self.padding = length_buckets.make(self.attention_mask, ("labels", "label_weights"), dynamic_padding)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """The sentences at `indices` (B,); every array leads with B."""
        return encoder_batch(self, indices, labels=self.labels, label_weights=self.label_weights)

    def word_predictions(self, pred_ids_NxT: np.ndarray) -> list[list[str]]:
        """One tag per word of every sentence, read from its first sub-word's predicted tag id.

        pred_ids_NxT: (len(self), T) tag ids per token. Words cut off by truncation (or that the
        tokenizer turned into no tokens) get "O".
        """
        if len(pred_ids_NxT) != len(self):
            raise ValueError(f"predictions for {len(pred_ids_NxT)} sentences, the dataset has {len(self)}")
        names = np.asarray(self.tag_names + ["O"], dtype=object)   # index -1 -> "O"
        out = []
        for first, pred_T in zip(self.first_token, pred_ids_NxT):
            tag_ids = np.where(first >= 0, pred_T[np.maximum(first, 0)], -1)
            out.append(names[tag_ids].tolist())
        return out
