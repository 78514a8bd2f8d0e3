"""A regularised linear model over the training matrix: the search's yardstick.

A boosted model that cannot beat a linear one on the same rows is a warning
sign (leakage, or too few rows for trees: a small hospital's segment), so
the search always tries one. When it wins on the selection slice it is the
model: saved as JSON text in `model.txt` (never pickle; the card says
`model_kind: linear`), and score loads it through `LinearModel.from_json`
with the same `predict(matrix)` call as a LightGBM booster.

Numpy only (the model extra has no scikit-learn): numeric columns are
mean-imputed (plus a missing indicator) and standardised on the fitting
rows; categorical codes become one-hot columns for their most frequent
levels. Logistic regression is fitted by Newton's method (IRLS), a ridge
regression in closed form; both penalise every weight but the intercept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = "batchline-linear/1"

MAX_LEVELS = 50  # one-hot columns per categorical; rarer levels share the zero vector
MAX_ROWS = 50_000  # plenty for ~100 weights; a seeded sample keeps memory and time small
L2 = 1.0  # the default penalty; the search tries L2_GRID
L2_GRID = (100.0, 10.0, 1.0)  # strongest (simplest) first: the search prefers it in a tie
NEWTON_STEPS = 50


@dataclass(frozen=True)
class Encoding:
    """How matrix columns become the linear model's inputs (learned on the fitting rows)."""

    numeric: list[int]
    means: np.ndarray
    scales: np.ndarray
    with_missing: list[int]  # numeric columns (positions in `numeric`) that had NaNs
    levels: dict[int, np.ndarray]  # categorical column -> the codes given a column

    @property
    def width(self) -> int:
        return 1 + len(self.numeric) + len(self.with_missing) + \
            sum(len(v) for v in self.levels.values())


def fit_encoding(x: np.ndarray, categorical: list[int]) -> Encoding:
    """Means, scales and one-hot levels from the fitting rows."""
    numeric = [j for j in range(x.shape[1]) if j not in set(categorical)]
    block = x[:, numeric].astype(np.float64)
    with np.errstate(all="ignore"):  # all-NaN columns: mean NaN, handled below
        means = np.nan_to_num(np.nanmean(block, axis=0)) if len(block) else np.zeros(0)
        scales = np.nan_to_num(np.nanstd(block, axis=0))
    scales[scales == 0] = 1.0
    with_missing = [k for k in range(len(numeric)) if np.isnan(block[:, k]).any()]
    levels = {}
    for j in categorical:
        codes = x[:, j][~np.isnan(x[:, j])]
        values, counts = np.unique(codes, return_counts=True)
        levels[j] = np.sort(values[np.argsort(-counts, kind="stable")][:MAX_LEVELS])
    return Encoding(numeric, means, scales, with_missing, levels)


def encode(enc: Encoding, x: np.ndarray) -> np.ndarray:
    """The design matrix (intercept first) of rows `x` under `enc`."""
    block = x[:, enc.numeric].astype(np.float64)
    missing = np.isnan(block)
    block = np.where(missing, enc.means, block)
    parts = [np.ones((len(x), 1)), (block - enc.means) / enc.scales,
             missing[:, enc.with_missing].astype(np.float64)]
    for j, values in enc.levels.items():
        parts.append((x[:, j][:, None] == values[None, :]).astype(np.float64))
    return np.hstack(parts)


def _penalty(width: int, l2: float) -> np.ndarray:
    eye = np.eye(width) * l2
    eye[0, 0] = 0.0  # the intercept is not shrunk
    return eye


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float = L2) -> np.ndarray:
    """L2-penalised logistic regression weights by Newton's method."""
    w = np.zeros(z.shape[1])
    penalty = _penalty(z.shape[1], l2)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -35, 35)))
        grad = z.T @ (p - y) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    return w


def fit_ridge(z: np.ndarray, y: np.ndarray, l2: float = L2) -> np.ndarray:
    """Ridge regression weights in closed form."""
    return np.linalg.solve(z.T @ z + _penalty(z.shape[1], l2) + 1e-9 * np.eye(z.shape[1]),
                           z.T @ y)


@dataclass(frozen=True)
class LinearModel:
    """Weights over an encoding of the matrix; predicts like a LightGBM booster does."""

    objective: str
    encoding: Encoding
    weights: np.ndarray
    l2: float = L2

    def predict(self, x: Any, **_: Any) -> np.ndarray:
        """Probabilities of class 1 (binary) or values (regression) for matrix rows `x`."""
        raw = encode(self.encoding, x) @ self.weights
        if self.objective == "binary":
            return np.asarray(1.0 / (1.0 + np.exp(-np.clip(raw, -35, 35))))
        return np.asarray(raw)

    def importance(self, n_features: int) -> list[float]:
        """Per matrix column, the largest absolute weight among its inputs (standardised)."""
        out = [0.0] * n_features
        w, at, enc = np.abs(self.weights), 1, self.encoding
        for k, j in enumerate(enc.numeric):
            out[j] = float(w[at + k])
        at += len(enc.numeric)
        for k in enc.with_missing:
            out[enc.numeric[k]] = max(out[enc.numeric[k]], float(w[at]))
            at += 1
        for j, values in enc.levels.items():
            out[j] = float(w[at:at + len(values)].max()) if len(values) else 0.0
            at += len(values)
        return out

    def to_json(self) -> str:
        """The model as JSON text (floats written exactly), for model.txt."""
        enc = self.encoding
        return json.dumps({
            "format": FORMAT, "objective": self.objective, "numeric": enc.numeric,
            "means": enc.means.tolist(), "scales": enc.scales.tolist(),
            "with_missing": enc.with_missing, "l2": self.l2,
            "levels": [[j, v.tolist()] for j, v in enc.levels.items()],
            "weights": self.weights.tolist()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LinearModel:
        """Read a model written by `to_json`."""
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model")
        enc = Encoding(data["numeric"], np.array(data["means"], dtype=np.float64),
                       np.array(data["scales"], dtype=np.float64), data["with_missing"],
                       {int(j): np.array(v, dtype=np.float64) for j, v in data["levels"]})
        return cls(data["objective"], enc, np.array(data["weights"], dtype=np.float64),
                   float(data["l2"]))


def fit(objective: str, x_fit: np.ndarray, y_fit: np.ndarray, categorical: list[int],
        seed: int, l2: float = L2) -> LinearModel:
    """Fit on (x_fit, y_fit): logistic regression (binary) or ridge (regression)."""
    if objective not in ("binary", "regression"):
        raise ValueError(f"no linear model for objective {objective}")
    if len(x_fit) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(x_fit), MAX_ROWS, replace=False))
        x_fit, y_fit = x_fit[rows], y_fit[rows]
    enc = fit_encoding(x_fit, categorical)
    z = encode(enc, x_fit)
    y = y_fit.astype(np.float64)
    weights = fit_logistic(z, y, l2) if objective == "binary" else fit_ridge(z, y, l2)
    return LinearModel(objective, enc, weights, l2)


def description(model: LinearModel, rows: int) -> dict[str, Any]:
    """What the leaderboard says of a linear candidate."""
    return {"l2": model.l2, "inputs": int(model.encoding.width), "rows": min(rows, MAX_ROWS)}
