"""Sequence-level scores: classification (per class, macro, MCC) and regression (Pearson, Spearman, MSE).

Definitions follow scikit-learn and SciPy, so the numbers match what papers and the
GLUE tables report: zero divisions score 0 (sklearn `zero_division=0`), macro averages
run over every class named (present or not), Spearman ranks ties by their average.
"""

import numpy as np


def _check_pair(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be equal-length 1-D arrays")
    if len(labels) == 0:
        raise ValueError("no examples to score")
    return predictions, labels


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, float]:
    """Accuracy, per-class and macro precision/recall/F1, and Matthews correlation.

    predictions, labels: int arrays (N,) of class indices in [0, K), K = len(label_names).
    Returns a flat dict of floats in [0, 1] (MCC in [-1, 1]): `accuracy`, `macro_precision`,
    `macro_recall`, `macro_f1`, `mcc`, and per class `precision/<name>`, `recall/<name>`,
    `f1/<name>`, `support/<name>` (the count of true examples of the class).
    """
    pred_N, label_N = _check_pair(predictions, labels)
    k = len(label_names)
    for name, ids in (("predictions", pred_N), ("labels", label_N)):
        if ids.min() < 0 or ids.max() >= k:
            raise ValueError(f"{name} hold class ids outside [0, {k}): {ids.min()}..{ids.max()}")
    confusion_KxK = np.zeros((k, k), np.int64)  # rows: true class, columns: predicted class
    np.add.at(confusion_KxK, (label_N.astype(np.int64), pred_N.astype(np.int64)), 1)

    tp_K = np.diag(confusion_KxK).astype(np.float64)
    true_K = confusion_KxK.sum(axis=1).astype(np.float64)
    pred_K = confusion_KxK.sum(axis=0).astype(np.float64)
    precision_K, recall_K = _divide(tp_K, pred_K), _divide(tp_K, true_K)
    f1_K = _divide(2 * tp_K, true_K + pred_K)  # = 2PR/(P+R), and 0 when there is no true nor predicted example

    # Matthews correlation, multi-class form (Gorodkin 2004), as sklearn.metrics.matthews_corrcoef.
    n, correct = float(len(label_N)), float(tp_K.sum())
    cov_true_pred = correct * n - true_K @ pred_K
    cov_pred_pred = n * n - pred_K @ pred_K
    cov_true_true = n * n - true_K @ true_K
    mcc = 0.0 if cov_pred_pred * cov_true_true == 0 else cov_true_pred / np.sqrt(cov_true_true * cov_pred_pred)

    out = {
        "accuracy": correct / n,
        "macro_precision": float(precision_K.mean()),
        "macro_recall": float(recall_K.mean()),
        "macro_f1": float(f1_K.mean()),
        "mcc": float(mcc),
    }
    for i, name in enumerate(label_names):
        out[f"precision/{name}"] = float(precision_K[i])
        out[f"recall/{name}"] = float(recall_K[i])
        out[f"f1/{name}"] = float(f1_K[i])
        out[f"support/{name}"] = float(true_K[i])
    return out


def _average_ranks(x_N: np.ndarray) -> np.ndarray:
    """Ranks 1..N of x_N (N,), tied values sharing the mean of their ranks (scipy.stats.rankdata 'average')."""
    order_N = np.argsort(x_N, kind="stable")
    sorted_N = x_N[order_N]
    # Tie groups are runs of equal values in sorted order; each gets the mean of its ordinal ranks.
    starts_G = np.flatnonzero(np.r_[True, sorted_N[1:] != sorted_N[:-1]])
    ends_G = np.r_[starts_G[1:], len(x_N)]  # exclusive
    mean_rank_G = (starts_G + 1 + ends_G) / 2.0
    ranks_N = np.empty(len(x_N), np.float64)
    ranks_N[order_N] = np.repeat(mean_rank_G, ends_G - starts_G)
    return ranks_N


def _pearson(x_N: np.ndarray, y_N: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (as scipy.stats.pearsonr)."""
    dx_N, dy_N = x_N - x_N.mean(), y_N - y_N.mean()
    norm_x, norm_y = np.linalg.norm(dx_N), np.linalg.norm(dy_N)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    # Normalizing before the dot product keeps the result within [-1, 1] up to one rounding.
    return float(np.clip((dx_N / norm_x) @ (dy_N / norm_y), -1.0, 1.0))


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation and mean squared error of float arrays (N,).

    Returns `pearson`, `spearman` (in [-1, 1]; NaN if either side is constant, as SciPy)
    and `mse` (in squared label units).
    """
    pred_N, label_N = _check_pair(predictions, labels)
    pred_N, label_N = pred_N.astype(np.float64), label_N.astype(np.float64)
    return {
        "pearson": _pearson(pred_N, label_N),
        "spearman": _pearson(_average_ranks(pred_N), _average_ranks(label_N)),
        "mse": float(np.mean((pred_N - label_N) ** 2)),
    }
