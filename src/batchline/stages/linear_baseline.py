"""A regularised linear model over the training matrix: the search's yardstick.

A boosted model that cannot beat a linear one on the same rows is a warning
sign (leakage in the linear part, or too little data for trees), so the
search lists one on its leaderboard. It is a leaderboard entry only: score
serves LightGBM text models, and a linear winner would need a second model
format there, so the search never picks it; when it beats every LightGBM
candidate, the search says so in its warnings.

Numpy only (the model extra has no scikit-learn): numeric columns are
mean-imputed (plus a missing indicator) and standardised on the fitting
rows; categorical codes become one-hot columns for their most frequent
levels. Logistic regression is fitted by Newton's method (IRLS), a ridge
regression in closed form; both penalise every weight but the intercept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LEVELS = 50  # one-hot columns per categorical; rarer levels share the zero vector
MAX_ROWS = 200_000  # a baseline: a seeded sample keeps its memory and time small
L2 = 1.0
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


def _penalty(width: int) -> np.ndarray:
    eye = np.eye(width) * L2
    eye[0, 0] = 0.0  # the intercept is not shrunk
    return eye


def fit_logistic(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """L2-penalised logistic regression weights by Newton's method."""
    w = np.zeros(z.shape[1])
    penalty = _penalty(z.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -35, 35)))
        grad = z.T @ (p - y) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    return w


def fit_ridge(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge regression weights in closed form."""
    return np.linalg.solve(z.T @ z + _penalty(z.shape[1]) + 1e-9 * np.eye(z.shape[1]), z.T @ y)


def fit_predict(objective: str, x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray,
                categorical: list[int], seed: int) -> tuple[np.ndarray, dict[str, int | float]]:
    """Fit on (x_fit, y_fit); predictions for x_eval (probabilities for binary) and a note."""
    if objective not in ("binary", "regression"):
        raise ValueError(f"no linear baseline for objective {objective}")
    if len(x_fit) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(x_fit), MAX_ROWS, replace=False))
        x_fit, y_fit = x_fit[rows], y_fit[rows]
    enc = fit_encoding(x_fit, categorical)
    z = encode(enc, x_fit)
    y = y_fit.astype(np.float64)
    if objective == "binary":
        w = fit_logistic(z, y)
        pred = 1.0 / (1.0 + np.exp(-np.clip(encode(enc, x_eval) @ w, -35, 35)))
    else:
        w = fit_ridge(z, y)
        pred = encode(enc, x_eval) @ w
    return pred, {"l2": L2, "inputs": int(enc.width), "rows": len(x_fit)}
