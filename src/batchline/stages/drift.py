"""Drift: compact reference profiles at train time, PSI against them on every scoring run.

train stores `profile.json` beside the model: for every feature a binned
histogram of the training rows (numbers: up to `BINS` quantile bins; a
categorical: one bin per vocabulary code; both with a bin for missing and,
for categoricals, unseen values) and the same for the model's predictions
on those rows. Never the raw data: a few hundred numbers per model.

score feeds each batch's model matrix and predictions into a `Tally` of the
same bins (streamed: memory is the bins, whatever the population), then
computes the population stability index per feature and for the
predictions:

    PSI = sum over bins of (actual% - expected%) * ln(actual% / expected%)

(`batchline.psi`, pure Python: the launcher merges score's shards with it).
The usual bands: below `warn` (0.1) stable, up to `alert` (0.25) a moderate
shift, above it a major one. Thresholds are the spec's
(`stages.score.params.drift`), and the bins, counts and thresholds are
recorded with the result in score's `_SUCCESS.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchline import psi
from batchline.stages.matrix import FeatureMap

BINS = 10
PROFILE = psi.PROFILE
PREDICTION = psi.PREDICTION  # the profile entry of the model's output


@dataclass
class Histogram:
    """Counts over fixed bins: `edges` (numbers: len(edges)+1 bins) or `codes` (a
    categorical: one bin per vocabulary code), then one bin for missing (NaN; for a
    categorical also a value unseen in training, which the model sees as missing)."""

    edges: list[float] | None = None
    codes: int | None = None
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (self.bins + 1)
        # the edges as the values' type, made once (searchsorted would convert each batch)
        self._cuts = np.asarray(self.edges or [], dtype=np.float32)

    @property
    def bins(self) -> int:
        return len(self.edges) + 1 if self.edges is not None else int(self.codes or 0)

    def add(self, values: np.ndarray) -> None:
        """Count a batch of values (float; NaN is missing)."""
        missing = np.isnan(values)
        present = values[~missing]
        if self.edges is not None:
            index = np.searchsorted(self._cuts, present, side="right")
        else:
            index = present.astype(np.int64)
        counts = np.bincount(index, minlength=self.bins)
        for i, n in enumerate(counts[:self.bins]):
            self.counts[i] += int(n)
        self.counts[-1] += int(missing.sum())

    def empty_copy(self) -> Histogram:
        return Histogram(self.edges, self.codes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counts": self.counts}
        if self.edges is not None:
            out["edges"] = self.edges
        else:
            out["codes"] = self.codes
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        return cls(data.get("edges"), data.get("codes"), list(data["counts"]))


def numeric_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Up to `bins` bins with about as many training rows each (quantile edges)."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return []
    cuts = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(c) for c in np.unique(cuts)]


def reference(matrix: np.ndarray, predictions: np.ndarray, fmap: FeatureMap) -> dict[str, Any]:
    """The profile train stores: a histogram per feature and of the predictions."""
    features = {}
    for j, name in enumerate(fmap.features):
        column = matrix[:, j]
        if name in fmap.categorical:
            histogram = Histogram(codes=len(fmap.categorical[name]))
        else:
            histogram = Histogram(edges=numeric_edges(column))
        histogram.add(column)
        features[name] = histogram.to_dict()
    output = _output_values(predictions)
    scores = Histogram(edges=numeric_edges(output))
    scores.add(output)
    return {"bins": BINS, "rows": int(matrix.shape[0]), "features": features,
            PREDICTION: scores.to_dict()}


def _output_values(predictions: np.ndarray) -> np.ndarray:
    """One number per row: the score (binary, regression) or the top probability."""
    values = np.asarray(predictions, dtype=np.float64)
    return values.max(axis=1) if values.ndim == 2 else values


class Tally:
    """A scoring run's histograms, in the reference's bins, fed batch by batch."""

    def __init__(self, profile: Mapping[str, Any], fmap: FeatureMap) -> None:
        self.reference = {**profile["features"], PREDICTION: profile[PREDICTION]}
        self.actual = {name: Histogram.from_dict(h).empty_copy()
                       for name, h in self.reference.items()}
        self.columns = [(j, name) for j, name in enumerate(fmap.features)
                        if name in self.reference]

    @property
    def rows(self) -> int:
        return sum(self.actual[PREDICTION].counts)

    def add(self, matrix: np.ndarray, predictions: np.ndarray) -> None:
        for j, name in self.columns:
            self.actual[name].add(matrix[:, j])
        self.actual[PREDICTION].add(_output_values(predictions))

    def result(self, warn: float, alert: float, min_rows: int = 1) -> dict[str, Any]:
        """PSI per feature and for the predictions (`batchline.psi.report`)."""
        counts = {name: h.counts for name, h in self.actual.items()}
        return psi.report(self.reference, counts, warn, alert, min_rows)


def dumps(profile: Mapping[str, Any]) -> bytes:
    return json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()
