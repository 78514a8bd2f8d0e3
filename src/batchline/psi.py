"""The population stability index over recorded bins: pure Python, for score and launcher.

    PSI = sum over bins of (actual% - expected%) * ln(actual% / expected%)

Each share is floored at `FLOOR`, so an empty bin does not make it infinite.

Two samples of one distribution differ by chance, and PSI counts that too:
over B bins with n and m rows it is about (B - 1)(1/n + 1/m) on average (PSI
is the Jeffreys divergence; n*m/(n+m) times it is near a chi-square with
B - 1 degrees of freedom). A 60-hospital column scored on 600 rows shows
PSI 0.1 with no shift at all. So the band is judged on the PSI above that
`noise` (recorded beside it): below `warn` stable, up to `alert` a moderate
shift, above it a major one. The histograms are built by `batchline.stages.drift` (train's profile,
score's tally); this module only compares counts, so the launcher can merge
the drift of score's shards (their counts summed) without numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FLOOR = 1e-4
PROFILE = "profile.json"  # a model's drift reference, beside it (stages/drift.py writes it)
PREDICTION = "prediction"  # the profile's entry for the model's output
STABLE, MODERATE, MAJOR = "stable", "moderate", "major"
UNJUDGED = "too few rows"  # a population below `min_rows`: PSI recorded, no band


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """The population stability index of `actual` counts against `expected` (same bins)."""
    total_e, total_a = sum(expected), sum(actual)
    if total_e == 0 or total_a == 0:
        return 0.0
    value = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / total_e, FLOOR), max(a / total_a, FLOOR)
        value += (pa - pe) * math.log(pa / pe)
    return round(value, 6)


def noise(expected: Sequence[int], actual: Sequence[int]) -> float:
    """The PSI two samples of these sizes show on average with no shift at all."""
    n, m = sum(expected), sum(actual)
    used = sum(1 for e, a in zip(expected, actual, strict=True) if e or a)
    if n == 0 or m == 0 or used < 2:
        return 0.0
    return round((used - 1) * (1 / n + 1 / m), 6)


def band(value: float, warn: float, alert: float) -> str:
    return MAJOR if value > alert else MODERATE if value >= warn else STABLE


def report(reference: Mapping[str, Mapping[str, Any]], counts: Mapping[str, Sequence[int]],
           warn: float, alert: float, min_rows: int = 1) -> dict[str, Any]:
    """PSI and band per feature and for the predictions, beside the bins and counts.

    `reference`: name -> the profile's histogram ({counts, edges} or {counts, codes}).
    Below `min_rows` scored rows nothing is banded: with a handful of rows most bins
    are empty, and an empty bin alone adds about share * ln(share / FLOOR) (0.7 for a
    tenth of the rows), far beyond any noise estimate.
    """
    out: dict[str, Any] = {}
    for name, expected in reference.items():
        if name not in counts:
            continue
        value = psi(expected["counts"], counts[name])
        floor = noise(expected["counts"], counts[name])
        bins = {k: expected[k] for k in ("edges", "codes") if k in expected}
        judged = sum(counts[name]) >= min_rows
        out[name] = {"psi": value, "noise": floor,
                     "band": band(value - floor, warn, alert) if judged else UNJUDGED,
                     "expected": list(expected["counts"]), "actual": list(counts[name]),
                     **bins}
    drifted = sorted((n for n, r in out.items() if r["band"] in (MODERATE, MAJOR)),
                     key=lambda n: (-out[n]["psi"], n))
    return {"thresholds": {"warn": warn, "alert": alert, "min_rows": min_rows}, "psi": out,
            "drifted": drifted}


def warnings(result: Mapping[str, Any]) -> list[str]:
    """The run summary's lines: one per drifted feature (or the predictions), worst first."""
    psi_ = result["psi"]
    limits = result["thresholds"]
    return [f"drift: {name} PSI {psi_[name]['psi']:.3f} (chance alone: "
            f"{psi_[name]['noise']:.3f}), a {psi_[name]['band']} shift from the training rows "
            f"(bands {limits['warn']} / {limits['alert']})" for name in result["drifted"]]


def merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One drift result from the shards' results: their actual counts summed, PSI again."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    first = parts[0]
    reference = {name: {k: v for k, v in r.items() if k in ("edges", "codes")} |
                 {"counts": r["expected"]} for name, r in first["psi"].items()}
    counts: dict[str, list[int]] = {}
    for part in parts:
        for name, r in part["psi"].items():
            old = counts.get(name)
            counts[name] = list(r["actual"]) if old is None else \
                [a + b for a, b in zip(old, r["actual"], strict=True)]
    limits = first["thresholds"]
    return report(reference, counts, limits["warn"], limits["alert"], limits.get("min_rows", 1))


def merge_score_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """score's union metrics from its shards': rows summed, warnings once each, and the
    drift of the whole population (the shards' counts summed, PSI computed again)."""
    if not parts:
        return {}
    warnings_: list[str] = []
    for part in parts:
        warnings_ += [w for w in part.get("warnings", []) if w not in warnings_]
    merged: dict[str, Any] = {"model_version": parts[0].get("model_version"),
                              "rows_scored": sum(int(p.get("rows_scored", 0)) for p in parts),
                              "population": parts[0].get("population"),
                              "trained": {k: v for p in parts
                                          for k, v in (p.get("trained") or {}).items()}}
    drift = merge(p.get("drift") or {} for p in parts)
    if drift is not None:
        merged.update(drift=drift, drift_alerts=len(drift["drifted"]))
        warnings_ += warnings(drift)
    return {**merged, "warnings": warnings_}
