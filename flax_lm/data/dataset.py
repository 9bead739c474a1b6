"""What every task's data gives the shared loop: indexable examples cut into fixed-shape batches."""

from typing import Protocol

import numpy as np


class Dataset(Protocol):
    """A split of a task's data.

    `batch(indices, epoch)` returns numpy arrays that all lead with len(indices) and have
    fixed trailing shapes (padded to the model's max_len), so one compiled step serves every
    batch. Every batch has `weights`: (B,) per example, or (B, T) per token for language
    modelling; the evaluator zeroes it on the rows that pad a last partial batch. `epoch`
    lets a split vary examples between epochs reproducibly (dynamic masking); others ignore it.
    """

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]: ...


def encoder_batch(encoded, indices: np.ndarray, **per_example) -> dict[str, np.ndarray]:
    """The rows `indices` of an encoded split (`input_ids`, `token_type_ids`, `attention_mask`
    arrays N x T) as int32 encoder inputs, with unit `weights` and the task's own arrays
    (`per_example`: name -> array leading with N)."""
    return {
        "input_ids": encoded.input_ids[indices],
        "token_type_ids": encoded.token_type_ids[indices].astype(np.int32),
        "attention_mask": encoded.attention_mask[indices].astype(np.int32),
        **{name: values[indices] for name, values in per_example.items()},
        "weights": np.ones(len(indices), np.float32),
    }
