"""T5's span-corruption pre-training objective, in numpy.

Random spans of a window of tokens are dropped from the encoder's input, each replaced by one
sentinel; the decoder learns to write the dropped spans back, each after its sentinel:

    tokens   The cat sat on the mat today
    inputs   The <extra_id_0> on the <extra_id_1> </s>
    targets  <extra_id_0> cat sat <extra_id_1> mat today </s>

This is t5.data.preprocessors' `random_spans_noise_mask`, `noise_span_to_unique_sentinel`,
`nonnoise_span_to_unique_sentinel` and `random_spans_helper` (one sentinel per span, an end
token on both sides). Masks are dynamic: window i of epoch e is corrupted with
`np.random.default_rng([seed, e, i])`, so a batch depends only on its indices and epoch and
resumption is exact.

The dataset takes one stream of token ids, documents each ended by `</s>` (as transformers'
run_t5_mlm_flax has them, since T5's tokenizer appends it to every text; T5's own pipeline joins
documents with no separator), and cuts it into windows of the raw token count whose corruption
fills the encoder exactly.
"""

import numpy as np

from flax_lm.data import lm_data, token_store
from flax_lm.errors import UserError


def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of `length` >= 2 tokens, as T5 counts them, with the
    clamps that keep every span, noise or not, at least one token long."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """(num_segments,) lengths of a uniformly random split of num_items into non-empty parts."""
    cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False) + 1)
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
               rng: np.random.Generator) -> np.ndarray:
    """(length,) bool, True on the tokens to corrupt (T5's `random_spans_noise_mask`).

    round(length * noise_density) noise tokens (at least 1, at most length - 1) in
    round(noise / mean_noise_span_length) spans (at least 1); the noise and non-noise span
    lengths are random partitions, interleaved starting with a non-noise span and ending with
    a noise span. A window of one token has no noise (T5 computes it at length 2 and cuts).
    """
    full = max(length, 2)
    num_noise, num_spans = _noise_counts(full, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(full - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, interleaved)[:length]


def corrupt(tokens_L: np.ndarray, mask_L: np.ndarray, sentinels: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, targets) int32 of `tokens_L` corrupted where `mask_L` is True.

    inputs: the tokens with each noise span replaced by the next sentinel, then eos
    (length L - noise + spans + 1); targets: each sentinel followed by its span's tokens, then
    eos (noise + spans + 1). `sentinels` are the ids of <extra_id_0>, <extra_id_1>, ... in that
    order, at least one per span. On T5's masks (first span not noise, last span noise) this is
    exactly T5's pair; on others it stays a consistent one.
    """
    tokens_L, mask_L = np.asarray(tokens_L, np.int32), np.asarray(mask_L, bool)
    previous_L = np.concatenate([[False], mask_L[:-1]])
    first_L = mask_L & ~previous_L
    num_spans = int(first_L.sum())
    if num_spans > len(sentinels):
        raise ValueError(f"{num_spans} noise spans but only {len(sentinels)} sentinels")
    span_L = np.cumsum(first_L) - 1
    kept_L = np.where(first_L, np.asarray(sentinels, np.int32)[np.maximum(span_L, 0)], tokens_L)
    inputs = np.append(kept_L[~(mask_L & previous_L)], eos)
    starts = np.flatnonzero(first_L[mask_L])   # where each span begins among the noise tokens
    targets = np.append(np.insert(tokens_L[mask_L], starts, sentinels[:num_spans]), eos)
    return inputs.astype(np.int32), targets.astype(np.int32)


def _corrupted_lengths(tokens_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(inputs, targets) lengths, end tokens included, of a corrupted window of `tokens_length`."""
    num_noise, num_spans = _noise_counts(max(tokens_length, 2), noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def lengths_for(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(tokens_length, targets_length): the most raw tokens whose corruption fits in `inputs_length`
    (eos included) and the length of their targets (eos included), as T5's `random_spans_helper`.

    The inputs length grows by 0 or 1 per raw token, so the corruption fills inputs_length
    exactly (512 -> 568 raw tokens and 114 targets at density 0.15, mean span 3). At density
    0.5, T5 takes one token less when the targets would be longer than the inputs; so does this.
    """
    if inputs_length < 2:
        raise ValueError(f"inputs_length must be at least 2, not {inputs_length}")
    tokens_length = inputs_length - 1
    while _corrupted_lengths(tokens_length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens_length += 1
    targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)[1]
    return tokens_length, targets_length


class SpanCorruptionDataset:
    """A token stream as a dataset (`flax_lm.data.dataset`) of span-corrupted windows.

    Window i is tokens[i*R : (i+1)*R], R = `tokens_length` raw tokens (`lengths_for`); the tail
    shorter than R is left out. batch() returns, with B = len(indices), T = seq_len and
    S = target_len (both with the end token):
      inputs, input_mask (B, T) int32: the corrupted window, then pad; 1 on real tokens.
      decoder_inputs (B, S) int32: `pad` (T5's decoder start), then the targets shifted right.
      targets (B, S) int32: sentinels and the spans they stand for, eos, then pad.
      weights (B, S) float32: 1 on real target tokens (eos included), 0 on padding.
    For T5's defaults every window fills both exactly; there is padding only at density 0.5.
    """

    def __init__(self, token_ids_N: np.ndarray, seq_len: int, noise_density: float,
                 mean_noise_span_length: float, sentinels: np.ndarray, eos: int, pad: int = 0, seed: int = 0):
        if not 0.0 < noise_density < 1.0:
            raise UserError(f"data.noise_density must be between 0 and 1 (T5 uses 0.15), not {noise_density}")
        if not mean_noise_span_length >= 1.0:
            raise UserError(f"data.mean_noise_span_length must be at least 1 (T5 uses 3.0), "
                            f"not {mean_noise_span_length}")
        if seq_len < 4:
            raise UserError(f"data.seq_len is {seq_len}; span corruption needs at least 4 input tokens")
        # a token store's stream stays on disk: it reads int32 ids where indexed, as an array does
        stored = isinstance(token_ids_N, token_store.TokenStream)
        self.tokens = token_ids_N if stored else np.asarray(token_ids_N, np.int32)
        self.seq_len, self.noise_density, self.mean_noise_span_length = seq_len, noise_density, mean_noise_span_length
        self.sentinels, self.eos, self.pad, self.seed = np.asarray(sentinels, np.int32), eos, pad, seed
        self.tokens_length, self.target_len = lengths_for(seq_len, noise_density, mean_noise_span_length)
        num_spans = _noise_counts(self.tokens_length, noise_density, mean_noise_span_length)[1]
        if num_spans > len(self.sentinels):
            raise UserError(
                f"span corruption of {seq_len} tokens (data.seq_len) makes {num_spans} noise spans but the tokenizer "
                f"has {len(self.sentinels)} sentinels; raise data.extra_ids or data.mean_noise_span_length, or "
                f"lower data.seq_len or data.noise_density")
        if len(self) == 0:
            raise UserError(
                f"data.source: the corpus has {len(self.tokens)} tokens, fewer than the {self.tokens_length} one "
                f"span-corruption example of {seq_len} input tokens needs; give more text or lower data.seq_len")

    def __len__(self) -> int:
        return len(self.tokens) // self.tokens_length

    def window(self, index: int) -> np.ndarray:
        """(tokens_length,) int32: the raw tokens of window `index`."""
        return self.tokens[index * self.tokens_length:(index + 1) * self.tokens_length]

    def mask(self, index: int, epoch: int) -> np.ndarray:
        """(tokens_length,) bool: the noise mask of window `index` in `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, index])
        return noise_mask(self.tokens_length, self.noise_density, self.mean_noise_span_length, rng)

    def batch(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """The windows `indices` (B,) of `epoch`, corrupted; keys and shapes in the class docstring."""
        indices = np.asarray(indices, np.int64)
        B, T, S = len(indices), self.seq_len, self.target_len
        out = {"inputs": np.full((B, T), self.pad, np.int32), "input_mask": np.zeros((B, T), np.int32),
               "decoder_inputs": np.full((B, S), self.pad, np.int32), "targets": np.full((B, S), self.pad, np.int32),
               "weights": np.zeros((B, S), np.float32)}
        for row, index in enumerate(indices):
            inputs, targets = corrupt(self.window(int(index)), self.mask(int(index), epoch), self.sentinels, self.eos)
            out["inputs"][row, :len(inputs)] = inputs
            out["input_mask"][row, :len(inputs)] = 1
            out["targets"][row, :len(targets)] = targets
            out["decoder_inputs"][row, 1:len(targets)] = targets[:-1]
            out["weights"][row, :len(targets)] = 1.0
        return out

    def stats(self) -> dict[str, float]:
        """Packing statistics (`packing_stats`): the encoder inputs' padding fraction and the
        documents with a token in each window."""
        n = min(len(self), lm_data.STATS_WINDOWS)
        used = self.tokens[:n * self.tokens_length].reshape(n, self.tokens_length)
        starts = (used[:, :-1] == self.eos).sum() + n   # a document starts after each eos, and at a row's start
        inputs = _corrupted_lengths(self.tokens_length, self.noise_density, self.mean_noise_span_length)[0]
        return {"padding_fraction": 1.0 - inputs / self.seq_len, "documents_per_sequence": float(starts / max(n, 1))}
