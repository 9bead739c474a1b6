"""Dynamic padding: batches padded to the longest example in them, rounded up to a bucket length.

Fine-tuning sentences are far shorter than the model's positions (SST-2 and CoNLL sentences
are ~25 sub-words; a model pads them to 64 or 128), so padding every batch to `seq_len` spends
most of the compute on padding. A batch is instead cut to the smallest bucket that holds its
longest example. Buckets are few (powers of two, then `seq_len`) because every distinct
shape is one more compilation of the step.

Grouping similar lengths into the same batch (`grouped_order`) makes the cut deeper; it
shuffles within large groups and then shuffles the batches, so training still sees a
random order, reproducible from the seed.
"""

import dataclasses

import numpy as np

SMALLEST = 16


def bucket_lengths(max_len: int, smallest: int = SMALLEST) -> tuple[int, ...]:
    """Powers of two from `smallest` below `max_len`, then `max_len` itself."""
    lengths = []
    length = smallest
    while length < max_len:
        lengths.append(length)
        length *= 2
    return (*lengths, max_len)


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `length` tokens."""
    return next((b for b in buckets if b >= length), buckets[-1])


@dataclasses.dataclass(frozen=True)
class DynamicPadding:
    """How a split's batches are cut: `lengths` (N,) real tokens of each example, `per_token`
    the batch keys whose arrays are (B, T), `buckets` the widths a batch may have."""

    lengths: np.ndarray
    per_token: tuple[str, ...]
    buckets: tuple[int, ...]

    def width(self, indices: np.ndarray) -> int:
        """The bucket that holds the longest of the examples `indices` (a global batch)."""
        return bucket_for(int(self.lengths[indices].max()), self.buckets)

    def cut(self, batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
        """`batch` with its per-token arrays cut to `width` columns."""
        return {k: v[:, :width] if k in self.per_token else v for k, v in batch.items()}


def padding_of(dataset) -> DynamicPadding | None:
    """The dataset's dynamic padding; None for a split of fixed-shape batches."""
    return getattr(dataset, "padding", None)


def load_batch(dataset, indices: np.ndarray, epoch: int = 0, whole_batch: np.ndarray | None = None) -> dict:
    """`dataset.batch(indices, epoch)`, cut to the bucket of the longest example of `whole_batch`
    when the dataset pads dynamically. `whole_batch` is the global batch that `indices` are this
    process's part of (default: `indices`), so every process cuts to the same width."""
    batch = dataset.batch(indices, epoch)
    padding = padding_of(dataset)
    if padding is None:
        return batch
    return padding.cut(batch, padding.width(indices if whole_batch is None else whole_batch))


def make(attention_mask_NxT: np.ndarray, per_token: tuple[str, ...], enabled: bool) -> DynamicPadding | None:
    """The dynamic padding of a split encoded as `attention_mask_NxT` (None when not `enabled`)."""
    if not enabled:
        return None
    lengths = attention_mask_NxT.sum(axis=1, dtype=np.int64)
    return DynamicPadding(lengths, ("input_ids", "token_type_ids", "attention_mask", *per_token),
                          bucket_lengths(attention_mask_NxT.shape[1]))


def grouped_order(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                  group_batches: int = 32) -> np.ndarray:
    """`order` (a permutation) rearranged so that each run of `batch_size` holds similar lengths.

    Each group of `group_batches` consecutive batches is sorted by length and cut into batches;
    all the batches are then shuffled. A tail shorter than a batch stays at the end (the
    iterator drops it, as it would have).
    """
    n_full = len(order) // batch_size * batch_size
    group = batch_size * group_batches
    batches = []
    for start in range(0, n_full, group):
        members = order[start:min(start + group, n_full)]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches.extend(np.split(members, len(members) // batch_size))
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    return np.concatenate(shuffled + [order[n_full:]])
