"""Model quality metrics over NumPy arrays, with no heavy dependency."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties counted half."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    _, first, counts = np.unique(score[order], return_index=True, return_counts=True)
    ranks = np.empty(len(score), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-12) -> float:
    """Binary log loss with probabilities clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, object]:
    """Reliability by equal-count bins and the expected calibration error."""
    order = np.argsort(p, kind="mergesort")
    y_sorted = np.asarray(y, dtype=np.float64)[order]
    p_sorted = np.asarray(p, dtype=np.float64)[order]
    table = []
    ece = 0.0
    for chunk_y, chunk_p in zip(np.array_split(y_sorted, bins), np.array_split(p_sorted, bins),
                                strict=True):
        if len(chunk_y) == 0:
            continue
        mean_p, mean_y = float(chunk_p.mean()), float(chunk_y.mean())
        table.append({"n": len(chunk_y), "predicted": round(mean_p, 5),
                      "observed": round(mean_y, 5)})
        ece += len(chunk_y) / len(y_sorted) * abs(mean_p - mean_y)
    return {"ece": round(ece, 5), "bins": table}


def recorded_ece(metrics: Mapping[str, Any]) -> float | None:
    """The calibration error a model's metrics recorded (`calibration_valid`, as
    `calibration` returns it), or None."""
    found = metrics.get("calibration_valid")
    ece = found.get("ece") if isinstance(found, Mapping) else None
    return float(ece) if isinstance(ece, int | float) else None


def roc_curve(y: np.ndarray, p: np.ndarray, points: int = 50) -> dict[str, list[float]]:
    """The ROC curve at about `points` thresholds (score quantiles), small enough for
    `_SUCCESS.json`: false and true positive rates from (0, 0) to (1, 1), highest
    threshold first. Quantile thresholds keep the curve's shape where the rows are."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    positives, negatives = np.sort(p[y]), np.sort(p[~y])
    if positives.size == 0 or negatives.size == 0:
        return {"fpr": [], "tpr": [], "thresholds": []}
    cuts = np.unique(np.quantile(p, np.linspace(0.0, 1.0, points + 1)))[::-1]

    def above(sorted_scores: np.ndarray) -> np.ndarray:  # share of scores >= each cut
        return 1.0 - np.searchsorted(sorted_scores, cuts, side="left") / sorted_scores.size

    fpr, tpr = above(negatives), above(positives)
    return {"fpr": [0.0, *(round(float(v), 4) for v in fpr)],
            "tpr": [0.0, *(round(float(v), 4) for v in tpr)],
            "thresholds": [1.0, *(round(float(v), 5) for v in cuts)]}


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(pred, dtype=np.float64) -
                                np.asarray(y, dtype=np.float64))))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination; NaN when the labels are constant (no variance to explain)."""
    y = np.asarray(y, dtype=np.float64)
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - np.asarray(pred, dtype=np.float64)) ** 2)) / total


def multi_log_loss(y: np.ndarray, proba: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log probability of the true class; `y` holds class indices 0..K-1."""
    proba = np.asarray(proba, dtype=np.float64)
    picked = proba[np.arange(len(proba)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    """Share of rows whose most probable class is the true class index."""
    return float(np.mean(np.argmax(np.asarray(proba), axis=1) == np.asarray(y, dtype=np.int64)))
