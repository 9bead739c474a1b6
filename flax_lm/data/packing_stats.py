"""How well a training split fills its sequences, said once when training starts.

Padding is compute spent on nothing; documents per sequence says how much packing
mixes documents (and so how much "segments" packing changes for a causal LM).
"""

import numpy as np

from flax_lm.data import length_buckets

_SAMPLE = 512  # examples looked at, evenly spread, for splits that do not count it themselves


def stats(dataset) -> dict[str, float]:
    """`padding_fraction` of the split's token positions (at full width), and for packed
    language-model windows `documents_per_sequence`."""
    if hasattr(dataset, "stats"):
        return dataset.stats()
    padding = length_buckets.padding_of(dataset)
    if padding is not None:
        width = padding.buckets[-1]
        return {"padding_fraction": 1.0 - float(padding.lengths.mean()) / width}
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), _SAMPLE)).astype(np.int64))
    mask = dataset.batch(indices).get("attention_mask")
    return {} if mask is None else {"padding_fraction": 1.0 - float(mask.mean())}


def describe(dataset, seq_len: int, dynamic: bool) -> str:
    """One line: sequences, tokens each, padding and documents per sequence."""
    s = stats(dataset)
    parts = [f"{len(dataset):,} training sequences of {seq_len} tokens"]
    if "padding_fraction" in s:
        cut = "; dynamic padding cuts most of it" if dynamic and s["padding_fraction"] > 0 else ""
        parts.append(f"{100 * s['padding_fraction']:.1f}% padding at full length{cut}")
    if "documents_per_sequence" in s:
        parts.append(f"{s['documents_per_sequence']:.2f} documents per sequence")
    return "data: " + ", ".join(parts)
