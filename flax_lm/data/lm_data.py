"""Token streams packed into fixed-length windows, and a resumable batch iterator.

Documents are joined with EOS into one stream; the stream's tail is the validation
split. Window i holds tokens [i*T, i*T + T] (T+1 tokens: inputs and shifted targets),
so packing leaves no padding at all.

Packed "concat" (GPT-2's way), a window's tokens attend to every earlier token in it,
across documents. Packed "segments", each EOS starts a new document: the window also
carries `segment_ids` (1, 2, ... per document) and `positions` that restart at 0 there,
so a token attends only within its own document. The EOS that opens a document is
where generation starts too, and the last token of a document still learns to predict
it, so every target keeps its weight.
"""

import dataclasses

import numpy as np
from tokenizers import Tokenizer

from flax_lm.data import length_buckets
from flax_lm.data import tokenizer as tokenizers_lib
from flax_lm.errors import UserError

STATS_WINDOWS = 1 << 14  # windows that packing statistics look at


@dataclasses.dataclass
class Splits:
    train: np.ndarray       # int32 token ids (or a token_store.TokenStream of them)
    validation: np.ndarray


def tokenize_and_split(documents: list[str], tokenizer: Tokenizer, validation_fraction: float,
                       seq_len: int, eos: int | None = None) -> Splits:
    """Encodes documents (batched, in Rust threads, without the tokenizer's own special tokens),
    joins them with `eos` (default: GPT-2's end-of-text) and splits the tail off."""
    eos = tokenizers_lib.eos_id(tokenizer) if eos is None else eos
    return split_stream(encode_documents(documents, tokenizer, eos), validation_fraction, seq_len)


def encode_documents(documents: list[str], tokenizer: Tokenizer, eos: int) -> np.ndarray:
    """(tokens,) int32: each document's ids without the tokenizer's own special tokens, then `eos`.
    `encode_batch` spreads the documents over the tokenizer's Rust threads."""
    pieces = []
    for encoding in tokenizer.encode_batch(documents, add_special_tokens=False):
        pieces += [np.asarray(encoding.ids, np.int32), np.asarray([eos], np.int32)]
    return np.concatenate(pieces)


def split_stream(stream, validation_fraction: float, seq_len: int) -> Splits:
    """The stream's tail of `validation_fraction` held out. `stream` is an int32 array, or a
    `token_store.TokenStream`, which is split into views without reading it."""
    n_val = int(len(stream) * validation_fraction)
    needed = 2 * (seq_len + 1)
    if n_val < seq_len + 1 or len(stream) - n_val < needed:
        raise UserError(
            f"data.source: the corpus has {len(stream)} tokens, too few for sequences of {seq_len} "
            f"with a validation fraction of {validation_fraction}; give more text or a shorter model.max_len")
    cut = len(stream) - n_val
    if isinstance(stream, np.ndarray):
        return Splits(train=stream[:cut], validation=stream[cut:])
    return Splits(train=stream.view(0, cut), validation=stream.view(cut, len(stream)))


def num_windows(tokens: np.ndarray, seq_len: int) -> int:
    return (len(tokens) - 1) // seq_len


def windows(tokens: np.ndarray, indices: np.ndarray, seq_len: int, eos: int | None = None) -> dict:
    """The causal-LM batch for window `indices`: inputs, targets (B x T int32), weights; with
    `eos`, also the documents' `segment_ids` and `positions` (B x T int32)."""
    starts = indices[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    chunk = tokens[starts]
    batch = {
        "inputs": chunk[:, :-1],
        "targets": chunk[:, 1:],
        "weights": np.ones((len(indices), seq_len), np.float32),
    }
    if eos is not None:
        batch.update(document_segments(batch["inputs"], eos))
    return batch


def document_segments(inputs_BxT: np.ndarray, eos: int) -> dict[str, np.ndarray]:
    """`segment_ids` (a new one at every EOS and at the row's start, from 1) and `positions`
    (0 at each segment's first token) of packed rows, B x T int32."""
    starts_BxT = inputs_BxT == eos
    starts_BxT[:, 0] = True
    columns = np.arange(inputs_BxT.shape[1], dtype=np.int32)
    first_BxT = np.maximum.accumulate(np.where(starts_BxT, columns, 0), axis=1)
    return {"segment_ids": np.cumsum(starts_BxT, axis=1, dtype=np.int32), "positions": columns - first_BxT}


class BatchIterator:
    """Epochs of a seeded permutation of `num_examples`, cut into global batches.

    Each process takes its contiguous slice of every global batch. The position
    (epoch, batch within epoch) is the whole state: `state()` / `restore()` make
    resumption exact. The incomplete batch at an epoch's end is dropped. With `lengths`
    (N,), each batch holds examples of similar length (`length_buckets.grouped_order`).
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                 lengths: np.ndarray | None = None):
        if num_examples < global_batch:
            raise UserError(
                f"train.batch_size ({global_batch}) is larger than the {num_examples} training sequences")
        self.num_examples, self.global_batch, self.seed, self.shuffle = num_examples, global_batch, seed, shuffle
        self.local_batch = global_batch // process_count
        self.process_index = process_index
        self.lengths = lengths
        self.batches_per_epoch = num_examples // global_batch
        self.epoch, self.batch = 0, 0
        self._order = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            # int32 where it fits: half the memory of rng.permutation's int64 for the windows of a large
            # token store, and the same shuffle (Generator.permutation(n) shuffles an arange the same way)
            self._order = np.arange(self.num_examples, dtype=np.int32 if self.num_examples < 2**31 else np.int64)
            if self.shuffle:
                rng.shuffle(self._order)
            if self.lengths is not None:
                self._order = length_buckets.grouped_order(self._order, self.lengths, self.global_batch, rng)
        return self._order

    def next_global_indices(self) -> np.ndarray:
        """The example indices of the next global batch (all processes')."""
        start = self.batch * self.global_batch
        indices = self._epoch_order()[start:start + self.global_batch]
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch, self._order = self.epoch + 1, 0, None
        return indices

    def local(self, global_indices: np.ndarray) -> np.ndarray:
        """This process's slice of a global batch."""
        start = self.process_index * self.local_batch
        return global_indices[start:start + self.local_batch]

    def next_indices(self) -> np.ndarray:
        """This process's example indices for the next global batch."""
        return self.local(self.next_global_indices())

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "num_examples": self.num_examples,
                "global_batch": self.global_batch, "grouped_by_length": self.lengths is not None}

    def restore(self, state: dict) -> None:
        mine = self.state()
        for key in ("seed", "num_examples", "global_batch", "grouped_by_length"):
            theirs = state.get(key, False)  # checkpoints from before length grouping have no such key
            if theirs != mine[key]:
                raise UserError(
                    f"cannot resume the data position: the checkpoint's {key} is {theirs}, "
                    f"this run's is {mine[key]} (was the data, batch size or data.group_by_length changed?)")
        self.epoch, self.batch, self._order = state["epoch"], state["batch"], None


class LMWindows:
    """A token stream (documents ended by `eos`) as a dataset (`flax_lm.data.dataset`) of its
    causal-LM windows, packed "concat" or "segments" (documents do not attend to each other)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, eos: int, packing: str = "concat"):
        self.tokens, self.seq_len, self.eos, self.packing = tokens, seq_len, eos, packing

    def __len__(self) -> int:
        return num_windows(self.tokens, self.seq_len)

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        return windows(self.tokens, indices, self.seq_len, self.eos if self.packing == "segments" else None)

    def stats(self) -> dict[str, float]:
        """Packing statistics: padding fraction (none: the windows tile the stream) and
        documents per sequence (those with a token in it), over the first STATS_WINDOWS windows
        (a token store may be far larger than memory)."""
        n = min(len(self), STATS_WINDOWS)
        used = self.tokens[:n * self.seq_len].reshape(n, self.seq_len)
        starts = (used[:, 1:] == self.eos).sum() + n  # a row's first token is in some document
        return {"padding_fraction": 0.0, "documents_per_sequence": float(starts / max(n, 1))}
