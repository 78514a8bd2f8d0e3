"""The promotion gate of one segment: does the new model replace the champion?

The challenger was just trained; the champion is whatever the registry's
`champion` alias names. Both are scored on the challenger's own validation
rows (rows neither model was fitted on in this run), in this run, so the
comparison is like for like. The challenger must pass the spec's absolute
checks (`promote.min_rows`, `promote.max_calibration_error`) and beat the
champion by `promote.min_gain`. The verdict, with its numbers, goes into
the worker's leaderboard; the launcher moves the aliases once the whole
fleet is judged (`batchline.promotion`), by a conditional write that another
run may win first, and records each decision in the registry. A fleet that
fails promotes nothing.

The global model is every other segment's fallback, so the first one is
promoted even when it misses an absolute check (the decision says so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchline import fleet
from batchline.health import describe as describe_health
from batchline.params import PromoteSpec, TrainParams
from batchline.registry import Registry
from batchline.stages import score
from batchline.stages import train as single
from batchline.stages.matrix import FeatureMap

HIGHER_IS_BETTER = ("auc", "r2", "accuracy")


@dataclass(frozen=True)
class Holdout:
    """The challenger's validation rows, as its matrix, and the fitting labels."""

    x: np.ndarray
    y: np.ndarray
    y_fit: np.ndarray
    feature_map: FeatureMap

    @classmethod
    def of(cls, data: single.TrainingData) -> Holdout:
        x, y = data.valid
        return cls(x, y, data.y[:data.n_fit], data.feature_map)


def remap(x: np.ndarray, ours: FeatureMap, theirs: FeatureMap) -> np.ndarray | None:
    """Our matrix recoded for a model with another category vocabulary; None when the
    two models do not use the same features the same way."""
    if ours.features != theirs.features or set(ours.categorical) != set(theirs.categorical):
        return None
    out = x.copy()
    for j, name in enumerate(ours.features):
        if name not in ours.categorical:
            continue
        index = {v: i for i, v in enumerate(theirs.categorical[name])}
        table = np.array([index.get(v, np.nan) for v in ours.categorical[name]] + [np.nan],
                         dtype=np.float32)
        column = x[:, j]
        codes = np.where(np.isnan(column), len(table) - 1, column).astype(np.int64)
        out[:, j] = table[codes]
    return out


def champion_metric(registry: Registry, key: str, version: str, holdout: Holdout,
                    params: TrainParams, metric: str) -> tuple[float | None, str]:
    """The champion's `metric` on the challenger's validation rows, or None and why not."""
    record = registry.version(key, version)
    card = record.get("card", {})
    if card.get("objective") != params.objective:
        return None, f"the champion's objective is {card.get('objective')}"
    theirs = FeatureMap(card["feature_map"]["features"], card["feature_map"]["categorical"])
    x = remap(holdout.x, holdout.feature_map, theirs)
    if x is None:
        return None, "the champion uses other features"
    booster = score.predictor(registry.model_text(key, version), card,
                              f"registry {key}/{version}")
    pred = np.asarray(booster.predict(x))
    value = single.validation_metrics(params.objective, holdout.y, pred, holdout.y_fit,
                                      params).get(f"{metric}_valid")
    return (None, f"{metric} is not measured for this objective") if value is None \
        else (float(value), "")


def _absolute_problems(metrics: dict[str, Any], gate: PromoteSpec) -> list[str]:
    problems = []
    rows = int(metrics.get("rows_valid", 0))
    if rows < gate.min_rows:
        problems.append(f"only {rows} validation rows, fewer than promote.min_rows "
                        f"{gate.min_rows}")
    ece = metrics.get("calibration_ece")
    if gate.max_calibration_error is not None and ece is not None and \
            ece > gate.max_calibration_error:
        problems.append(f"calibration error {ece} above promote.max_calibration_error "
                        f"{gate.max_calibration_error}")
    return problems


def decide(registry: Registry, key: str, version: str, metrics: dict[str, Any],
           holdout: Holdout, params: TrainParams) -> dict[str, Any]:
    """Judge the challenger `version` against the champion; writes nothing. The verdict
    has `promote` (move the champion alias to `version`, if it still names
    `champion_version`), `reason`, the numbers, and `serving`: the version this run
    scores the segment with (None: the global model does)."""
    gate = params.promote or PromoteSpec()
    ours = metrics.get(f"{gate.metric}_valid")
    champion = registry.alias(key)
    decision: dict[str, Any] = {"version": version, "metric": gate.metric, "challenger": ours,
                                "champion_version": champion.version if champion else None,
                                "champion": None, "at": round(time.time(), 3)}
    health = registry.health(key, champion.version) if champion is not None else None
    if champion is not None and health is not None and health.get("degraded"):
        # what a person must read first: outcomes showed the champion has degraded
        decision["champion_degraded"] = describe_health(health, champion.version)
    if champion is not None and champion.version == version:
        return _verdict(decision, False, fleet.ALREADY_CHAMPION, version)
    problems = [] if ours is not None else \
        [f"{gate.metric} is not measured for objective {params.objective}; set promote.metric"]
    problems += _absolute_problems(metrics, gate)
    if champion is not None and ours is not None:
        theirs, why = champion_metric(registry, key, champion.version, holdout, params,
                                      gate.metric)
        decision["champion"] = theirs
        if theirs is None:
            problems.append(f"cannot score the champion on this holdout ({why}); compare and "
                            "promote by hand (batchline models promote)")
        else:
            gain = (ours - theirs) if gate.metric in HIGHER_IS_BETTER else (theirs - ours)
            decision["gain"] = round(gain, 6)
            if gain < gate.min_gain:
                problems.append(f"{gate.metric} {ours} vs champion {theirs}: gain {gain:+.4f} "
                                f"below promote.min_gain {gate.min_gain}")
    forced = champion is None and key == fleet.GLOBAL and problems
    if problems and not forced:
        return _verdict(decision, False, "; ".join(problems),
                        champion.version if champion else None)
    reason = ("first model of this segment" if champion is None else
              f"{gate.metric} {ours} beats champion {decision['champion']} by at least "
              f"{gate.min_gain}")
    if forced:
        reason += f" (promoted despite: {'; '.join(problems)}: the fallback must exist)"
    return _verdict(decision, True, reason, version)


def _verdict(decision: dict[str, Any], promote: bool, reason: str,
             serving: str | None) -> dict[str, Any]:
    if "champion_degraded" in decision:
        reason = f"{decision['champion_degraded']}; {reason}"
    return {**decision, "promote": promote, "reason": reason, "serving": serving}
