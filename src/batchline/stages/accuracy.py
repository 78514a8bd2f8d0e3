"""Accuracy of predictions once their outcomes are known, per group, against training.

Pure functions over NumPy arrays: the monitor stage joins outcomes to
predictions and hands each group's labels and scores here. A group is judged
only with enough matured outcomes of both classes; otherwise its figures are
recorded and `judged` is false, so a handful of rows cannot raise an alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchline.metrics import auc, calibration, log_loss

# metric -> (the model's figure at training, True if higher is better)
TRAINING_KEY = {"auc": ("auc_valid", True), "logloss": ("logloss_valid", False),
                "calibration_ece": ("calibration_ece", False)}


@dataclass(frozen=True)
class Judge:
    """How a group's figures are compared with the model's own at training."""

    metric: str
    tolerance: float
    min_labelled: int
    bins: int = 10

    def group(self, y: np.ndarray, score: np.ndarray, training: float | None,
              **key: Any) -> dict[str, Any]:
        """One group's row: its size, AUC, log loss, calibration, and whether it degraded."""
        n, positives = len(y), int(np.sum(y))
        row: dict[str, Any] = {**key, "labelled": n, "positives": positives,
                               "auc": None, "logloss": None, "calibration_ece": None,
                               "training": _rounded(training), "judged": False,
                               "degraded": False}
        if n == 0:
            return row
        both = 0 < positives < n
        row["logloss"] = _rounded(log_loss(y, score))
        ece = calibration(y, score, self.bins)["ece"]
        row["calibration_ece"] = _rounded(float(ece)) if isinstance(ece, int | float) else None
        row["auc"] = _rounded(auc(y, score)) if both else None
        value = row[self.metric]
        if n >= self.min_labelled and both and value is not None and training is not None:
            row["judged"] = True
            _, higher_better = TRAINING_KEY[self.metric]
            drop = training - value if higher_better else value - training
            row["degraded"] = drop > self.tolerance
        return row

    def describe(self, row: dict[str, Any], what: str) -> str:
        """A degraded group, in words, for warnings and the report."""
        return (f"{what}: {self.metric} {row[self.metric]:.4f} on {row['labelled']:,} matured "
                f"outcomes against {row['training']:.4f} at training (tolerance "
                f"{self.tolerance})")


def training_value(trained: dict[str, Any] | None, metric: str) -> float | None:
    """The model's own figure for `metric` at training, from score's `trained` record."""
    value = (trained or {}).get(TRAINING_KEY[metric][0])
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def weighted_training(values: list[tuple[float | None, int]]) -> float | None:
    """Rows scored by several models: their training figures weighted by rows."""
    known = [(v, n) for v, n in values if v is not None and n > 0]
    total = sum(n for _, n in known)
    return sum(v * n for v, n in known) / total if total else None


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)
