"""Masked-LM (and next-sentence) pre-training examples, fixed at construction, masked anew each epoch.

A document is a string; its sentences are its non-empty lines. All sentences are tokenized
once into one flat token array, so every segment of an example is a range [start, end) of
it. With `nsp` the examples are BERT's sentence pairs, built as create_instances_from_document
in google-research/bert's create_pretraining_data.py; without, RoBERTa-style single segments
of whole sentences packed up to the length limit. Masks are dynamic (RoBERTa): example i of
epoch e is masked with `np.random.default_rng([seed, e, i])`, so a batch depends only on its
indices and epoch, which makes resumption exact.
"""

import math
import random

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import masking
from flax_lm.data.wordpiece import special_tokens
from flax_lm.errors import UserError

IS_NEXT, NOT_NEXT = 0, 1   # the label convention of transformers' BertForPreTraining


class _Tokens:
    """Every sentence's tokens in one array, with word starts and per-document sentence bounds."""

    def __init__(self, documents: list[str], tokenizer: Tokenizer):
        per_document = [[s for s in (line.strip() for line in d.splitlines()) if s] for d in documents]
        encodings = tokenizer.encode_batch([s for sents in per_document for s in sents], add_special_tokens=False)
        ids, word_starts, lengths = [], [], []
        for enc in encodings:
            word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids], np.int64)
            ids.append(np.asarray(enc.ids, np.int32))
            word_starts.append(np.diff(word_ids, prepend=-2) != 0)
            lengths.append(len(enc.ids))
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self.word_start = np.concatenate(word_starts) if word_starts else np.zeros(0, bool)
        bounds = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        # documents[d] = list of (start, end) of its sentences that have tokens
        self.documents, k = [], 0
        for sents in per_document:
            spans = [(int(bounds[k + j]), int(bounds[k + j + 1])) for j in range(len(sents))]
            k += len(sents)
            spans = [s for s in spans if s[1] > s[0]]
            if spans:
                self.documents.append(spans)


def _pack_segments(document: list[tuple[int, int]], max_tokens: int) -> list[tuple[int, int]]:
    """Greedy packing of a document's consecutive sentences into ranges of at most max_tokens;
    a sentence longer than that is cut into pieces."""
    segments, start, end = [], None, None
    for s, e in document:
        if start is not None and e - start > max_tokens:
            segments.append((start, end))
            start = None
        if start is None:
            start = s
        while e - start > max_tokens:
            segments.append((start, start + max_tokens))
            start += max_tokens
        end = e
    if start is not None:
        segments.append((start, end))
    return segments


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Google's truncate_seq_pair on [start, end) ranges: drop from the front or back of the longer."""
    while (a[1] - a[0]) + (b[1] - b[0]) > max_tokens:
        longer = a if a[1] - a[0] > b[1] - b[0] else b
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1


def _nsp_instances(documents: list[list[tuple[int, int]]], max_tokens: int, short_seq_prob: float,
                   rng: random.Random) -> list[tuple[int, int, int, int, int]]:
    """(a_start, a_end, b_start, b_end, label) rows, as create_instances_from_document makes them."""
    instances = []
    for doc_index, document in enumerate(documents):
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_tokens)
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += document[i][1] - document[i][0]
            if i == len(document) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [chunk[0][0], chunk[a_end - 1][1]]
                if len(chunk) == 1 or rng.random() < 0.5:
                    label = NOT_NEXT
                    for _ in range(10):
                        other = rng.randint(0, len(documents) - 1)
                        if other != doc_index:
                            break
                    random_document = documents[other]
                    start = rng.randint(0, len(random_document) - 1)
                    b = [random_document[start][0], random_document[start][1]]
                    for _, e in random_document[start + 1:]:
                        if b[1] - b[0] >= target - (a[1] - a[0]):
                            break
                        b[1] = e
                    i -= len(chunk) - a_end   # the unused sentences start the next chunk
                else:
                    label = IS_NEXT
                    b = [chunk[a_end][0], chunk[-1][1]]
                _truncate_pair(a, b, max_tokens, rng)
                instances.append((a[0], a[1], b[0], b[1], label))
                chunk, length = [], 0
            i += 1
    return instances


class MLMDataset:
    """Masked-LM examples of `max_len` tokens from `documents` (see the module docstring).

    Args:
      documents: texts; each non-empty line is a sentence.
      tokenizer: a BERT (WordPiece) or RoBERTa-style tokenizer with the special tokens of
        `wordpiece.special_tokens`.
      max_len: T, the length of every example including [CLS] and [SEP]s.
      seed: fixes the examples and, with the epoch, every mask.
      nsp: BERT sentence pairs with a next-sentence label; else single packed segments.
      whole_word: mask all sub-words of a word together.
      mask_prob: fraction of the maskable tokens to predict.
      max_predictions: P, prediction slots per example; default ceil(mask_prob * max_len).
      short_seq_prob: with nsp, the chance that a document aims at a random shorter length (as BERT).
    """

    def __init__(self, documents: list[str], tokenizer: Tokenizer, max_len: int, seed: int, *, nsp: bool,
                 whole_word: bool, mask_prob: float = 0.15, max_predictions: int | None = None,
                 short_seq_prob: float = 0.1):
        n_special = 3 if nsp else 2
        if max_len < n_special + 2:
            raise UserError(f"model.max_len is {max_len}; masked-LM examples need at least {n_special + 2} tokens")
        if not 0.0 < mask_prob < 1.0:
            raise UserError(f"the masking probability must be between 0 and 1, not {mask_prob}")
        self.special = special_tokens(tokenizer)
        self.vocab_size = tokenizer.get_vocab_size()
        self.max_len, self.seed, self.nsp, self.whole_word, self.mask_prob = max_len, seed, nsp, whole_word, mask_prob
        self.max_predictions = math.ceil(mask_prob * max_len) if max_predictions is None else max_predictions
        self.tokens = _Tokens(documents, tokenizer)
        documents = self.tokens.documents
        if not documents or (nsp and len(documents) < 2):
            raise UserError(
                f"data.source: {len(documents)} document(s) with text, too little for masked-LM examples"
                f"{' with next-sentence pairs (they need at least 2 documents)' if nsp else ''}; give more text")
        max_tokens = max_len - n_special
        if nsp:
            rows = _nsp_instances(documents, max_tokens, short_seq_prob, random.Random(seed))
        else:
            rows = [(s, e, 0, 0, -1) for doc in documents for s, e in _pack_segments(doc, max_tokens)]
        # (N, 5) int64: a_start, a_end, b_start, b_end, next-sentence label (-1 without nsp)
        self.instances = np.asarray(rows, np.int64).reshape(-1, 5)
        self._special_ids = np.asarray(self.special, np.int32)

    def __len__(self) -> int:
        return len(self.instances)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instance `index` unmasked: ids_L, token_type_L and word_start_L (L <= max_len, no padding)."""
        a0, a1, b0, b1, _ = (int(v) for v in self.instances[index])
        sp, ids, starts = self.special, self.tokens.ids, self.tokens.word_start
        parts = [[sp.cls], ids[a0:a1], [sp.sep]]
        start_parts = [[False], starts[a0:a1], [False]]
        n_first = a1 - a0 + 2
        if self.nsp:
            parts += [ids[b0:b1], [sp.sep]]
            start_parts += [starts[b0:b1], [False]]
        ids_L = np.concatenate(parts).astype(np.int32)
        word_start_L = np.concatenate(start_parts).astype(bool)
        # A segment cut by truncation or packing may begin mid-word; its first token starts a word.
        word_start_L[1] = True
        if self.nsp:
            word_start_L[n_first] = True
        token_type_L = np.zeros(len(ids_L), np.int32)
        token_type_L[n_first:] = 1
        return ids_L, token_type_L, word_start_L

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """Masked examples `indices` of `epoch`.

        Returns input_ids, token_type_ids, attention_mask (B, T) int32 padded with the pad id;
        masked_positions, masked_ids (B, P) int32 and masked_weights (B, P) float32;
        next_sentence_label (B,) int32 (0 = IsNext, 1 = NotNext) with nsp; weights (B,) float32 ones.
        """
        indices = np.asarray(indices, np.int64)
        B, T, P = len(indices), self.max_len, self.max_predictions
        out = {
            "input_ids": np.full((B, T), self.special.pad, np.int32),
            "token_type_ids": np.zeros((B, T), np.int32),
            "attention_mask": np.zeros((B, T), np.int32),
            "masked_positions": np.zeros((B, P), np.int32),
            "masked_ids": np.zeros((B, P), np.int32),
            "masked_weights": np.zeros((B, P), np.float32),
        }
        for row, index in enumerate(indices):
            ids_L, token_type_L, word_start_L = self.example(int(index))
            L = len(ids_L)
            candidate_L = ~np.isin(ids_L, self._special_ids)
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            input_ids_L, positions, targets, weights = masking.mask_tokens(
                ids_L, candidate_L, rng, mask_id=self.special.mask, vocab_size=self.vocab_size,
                mask_prob=self.mask_prob, max_predictions=P, word_start_T=word_start_L if self.whole_word else None)
            out["input_ids"][row, :L] = input_ids_L
            out["token_type_ids"][row, :L] = token_type_L
            out["attention_mask"][row, :L] = 1
            out["masked_positions"][row], out["masked_ids"][row] = positions, targets
            out["masked_weights"][row] = weights
        if self.nsp:
            out["next_sentence_label"] = self.instances[indices, 4].astype(np.int32)
        out["weights"] = np.ones(B, np.float32)
        return out
