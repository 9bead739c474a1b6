"""BERT's masked-LM corruption of one token sequence (pure numpy, reproducible from a Generator).

Follows create_masked_lm_predictions in google-research/bert's create_pretraining_data.py:
a fixed budget of positions (or whole words) is drawn without replacement; of those, 80%
become [MASK], 10% a random token and 10% stay as they are. Two deliberate differences:
the budget is a fraction of the maskable tokens (Google's counts [CLS]/[SEP] too), and the
10%/10% split is one draw per position rather than two nested coin flips (same odds).
"""

import numpy as np


def _words(candidate_T: np.ndarray, word_start_T: np.ndarray | None) -> list[np.ndarray]:
    """Maskable units as arrays of positions: single candidates, or runs of a word's sub-words.

    A word continues while positions are candidates and not marked as a word start; a
    non-candidate (special token, padding) always ends it.
    """
    positions = np.flatnonzero(candidate_T)
    if word_start_T is None or len(positions) == 0:
        return [positions[i:i + 1] for i in range(len(positions))]
    starts = np.asarray(word_start_T, bool)[positions]
    starts[0] = True
    starts[1:] |= np.diff(positions) != 1   # a gap (special token) between candidates splits the word
    return np.split(positions, np.flatnonzero(starts)[1:])


def _choose(words: list[np.ndarray], budget: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of randomly ordered words taken greedily, skipping any that would exceed `budget`."""
    order = rng.permutation(len(words))
    lengths = np.fromiter((len(words[i]) for i in order), np.int64, len(order))
    # Everything before the first overflow fits; only the rest needs the skip-and-continue loop.
    n_prefix = int(np.searchsorted(np.cumsum(lengths), budget, side="right"))
    chosen = [words[i] for i in order[:n_prefix]]
    used = int(lengths[:n_prefix].sum())
    for k in range(n_prefix, len(order)):
        if used >= budget:
            break
        if used + lengths[k] <= budget:
            chosen.append(words[order[k]])
            used += int(lengths[k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def num_to_predict(n_candidates: int, mask_prob: float, max_predictions: int) -> int:
    """The masking budget: round(mask_prob * n_candidates), at least 1 if any, at most max_predictions."""
    if n_candidates == 0:
        return 0
    return min(max_predictions, max(1, round(n_candidates * mask_prob)))


def mask_tokens(ids_T: np.ndarray, candidate_T: np.ndarray, rng: np.random.Generator, *, mask_id: int,
                vocab_size: int, mask_prob: float = 0.15, max_predictions: int,
                word_start_T: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks one sequence of T token ids for the masked-LM loss.

    Args:
      ids_T: (T,) int token ids, including special tokens and padding.
      candidate_T: (T,) bool, True where a token may be masked (False on special tokens and padding).
      rng: the only source of randomness; the same state gives the same result.
      mask_id: the [MASK] id.
      vocab_size: random replacements are uniform over [0, vocab_size), special ids included,
        as in Google's and Hugging Face's data pipelines.
      mask_prob: fraction of candidates to predict.
      max_predictions: P, the fixed number of prediction slots.
      word_start_T: (T,) bool, True at each word's first sub-word; given, whole words are masked.

    Returns:
      input_ids_T (T,) int32: ids with the chosen positions corrupted.
      positions_P (P,) int32: sorted chosen positions, padded with 0.
      targets_P (P,) int32: the original ids there, padded with 0.
      weights_P (P,) float32: 1 for real predictions, 0 for padding.
    """
    ids_T = np.asarray(ids_T, np.int32)
    candidate_T = np.asarray(candidate_T, bool)
    budget = num_to_predict(int(candidate_T.sum()), mask_prob, max_predictions)
    chosen = _choose(_words(candidate_T, word_start_T), budget, rng)
    n = len(chosen)

    u = rng.random(n)
    random_ids = rng.integers(0, vocab_size, n)
    input_ids_T = ids_T.copy()
    replaced = ids_T[chosen]
    replaced = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_ids, replaced))
    input_ids_T[chosen] = replaced

    positions_P = np.zeros(max_predictions, np.int32)
    targets_P = np.zeros(max_predictions, np.int32)
    weights_P = np.zeros(max_predictions, np.float32)
    positions_P[:n], targets_P[:n], weights_P[:n] = chosen, ids_T[chosen], 1.0
    return input_ids_T, positions_P, targets_P, weights_P
