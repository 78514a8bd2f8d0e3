"""A search over LightGBM's hyperparameters within a budget, judged on its own slice.

The training matrix's fitting rows are split once more (train.py carves the
slice with split.py's logic, so a time split holds out the most recent
fitting rows): candidates fit on the rest, stop early on the early-stopping
slice and are ranked on the selection slice. The validation rows are touched
by no candidate and by no choice, so the metrics the model card reports stay
honest. The winner is refit on fitting + selection rows (the rows the
stage's model would have seen without a search) and compared on validation
with the model the stage trains without a search (the spec's params).

Candidates: the spec's own params first, then Optuna's TPE sampler (seeded)
over num_leaves, learning_rate, min_data_in_leaf, feature_fraction, bagging,
L1/L2 penalties and min_gain_to_split; plus a linear model
(linear_baseline.py, binary and regression). The winner is the simplest
candidate within one standard error of the best (`choose`). The search stops at
`max_trials` (deterministic: same data and seed, same winner and same model
bytes) or at `budget_seconds` of wall time (not deterministic on a busy
machine); `stopped_by` records which. Pure over numpy: no storage here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np

from batchline.errors import DataError
from batchline.metrics import accuracy, auc, log_loss, mae, multi_log_loss, r2, rmse
from batchline.params import TrainParams
from batchline.stages import linear_baseline
from batchline.stages.lgb_params import canonical_names
from batchline.stages.linear_baseline import LinearModel

# _fit: the stage's own fit of the spec's params, the model a search must beat
from batchline.stages.train import TrainingData, _fit

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

MAXIMIZE = {"auc", "r2", "accuracy"}
# LightGBM's name for the metric, so early stopping watches what the search ranks by
# (r2 ranks like l2; accuracy like multi_error).
LIGHTGBM_METRIC = {"auc": "auc", "logloss": "binary_logloss", "rmse": "rmse", "mae": "l1",
                   "r2": "l2", "multi_logloss": "multi_logloss", "accuracy": "multi_error"}
METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc, "logloss": log_loss, "rmse": rmse, "mae": mae, "r2": r2,
    "multi_logloss": multi_log_loss, "accuracy": accuracy}
SEARCHED = ("num_leaves", "learning_rate", "min_data_in_leaf", "feature_fraction",
            "bagging_fraction", "bagging_freq", "lambda_l1", "lambda_l2", "min_gain_to_split")
LEADERBOARD_TOP = 5


@dataclass(frozen=True)
class Candidate:
    """One model tried: its params, its metric on the selection slice, what it cost."""

    trial: int
    kind: str  # "lightgbm" or "linear"
    params: dict[str, Any]
    metric: float
    seconds: float
    rounds: int | None = None
    note: str = ""
    se: float = math.nan  # the metric's standard error on the selection slice

    def row(self, rank: int | None = None) -> dict[str, Any]:
        """The candidate as a leaderboard row (JSON-ready)."""
        out = {k: v for k, v in asdict(self).items() if v not in ("", None)}
        out["metric"] = _round(self.metric)
        out["se"] = _round(self.se)
        out["seconds"] = round(self.seconds, 3)
        return out if rank is None else {"rank": rank, **out}


@dataclass(frozen=True)
class SearchResult:
    """The refit winner, the spec's params refit alike, and every candidate tried."""

    booster: lgb.Booster | LinearModel
    default_booster: lgb.Booster
    summary: dict[str, Any]
    leaderboard: dict[str, Any]
    warnings: list[str]


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def metric_value(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    """`metric` of predictions `pred` for labels `y` (NaN where it is undefined)."""
    return float(METRIC_FUNCTIONS[metric](y, pred))


def standard_error(metric: str, y: np.ndarray, pred: np.ndarray, value: float) -> float:
    """The standard error of `metric` (= `value`) on these rows: how much of a lead is noise.

    AUC by Hanley and McNeil (1982); the mean-loss metrics as the standard
    error of a mean of per-row losses (rmse and r2 through the squared error).
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 2 or math.isnan(value):
        return math.nan
    if metric == "auc":
        n1 = float(y.sum())
        n0 = n - n1
        q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
        var = (value * (1 - value) + (n1 - 1) * (q1 - value**2)
               + (n0 - 1) * (q2 - value**2)) / (n1 * n0)
        return math.sqrt(max(var, 0.0))
    pred = np.asarray(pred, dtype=np.float64)
    if metric == "logloss":
        p = np.clip(pred, 1e-12, 1 - 1e-12)
        rows = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    elif metric == "multi_logloss":
        rows = -np.log(np.clip(pred[np.arange(n), y.astype(np.int64)], 1e-12, 1.0))
    elif metric == "accuracy":
        rows = (np.argmax(pred, axis=1) == y).astype(np.float64)
    elif metric == "mae":
        rows = np.abs(pred - y)
    else:  # rmse, r2: through the mean squared error
        rows = (pred - y) ** 2
    se = float(rows.std(ddof=1) / math.sqrt(n))
    if metric == "rmse":
        return se / (2 * value) if value > 0 else math.nan
    if metric == "r2":
        spread = float(y.var())
        return se / spread if spread > 0 else math.nan
    return se


def better(metric: str, a: float, b: float) -> bool:
    """Whether a is strictly better than b under `metric`; NaN is never better."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if metric in MAXIMIZE else a < b


def spec_candidate_params(params: TrainParams) -> dict[str, Any]:
    """The searched parameters as the spec sets them (its fields, then `lightgbm:`)."""
    own: dict[str, Any] = {"num_leaves": params.num_leaves,
                           "learning_rate": params.learning_rate,
                           "min_data_in_leaf": params.min_data_in_leaf,
                           "feature_fraction": params.feature_fraction}
    names = canonical_names()
    for name, value in params.lightgbm.items():
        if names.get(name) in SEARCHED:
            own[names[name]] = value
    return own


def sample(trial: optuna.Trial, n_fit: int) -> dict[str, Any]:
    """One candidate's LightGBM parameters, drawn by the sampler."""
    bagging = trial.suggest_float("bagging_fraction", 0.5, 1.0)
    return {
        "num_leaves": trial.suggest_int("num_leaves", 4, 256, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        # a leaf may not need more rows than a tenth of the fitting rows hold
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 2,
                                              max(3, min(500, n_fit // 10)), log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": bagging,
        "bagging_freq": 1 if bagging < 1.0 else 0,
        "lambda_l1": trial.suggest_float("lambda_l1", 1e-4, 10.0, log=True),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-4, 30.0, log=True),
        "min_gain_to_split": trial.suggest_float("min_gain_to_split", 0.0, 1.0),
    }


def _deadline_callback(at: float) -> Callable[[Any], None]:
    # Stops a candidate that would outrun the budget at the round it has
    # reached; it keeps its model and is marked as cut.
    def callback(env: Any) -> None:
        if time.monotonic() > at:
            raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

    callback.order = 40  # type: ignore[attr-defined]  # after early stopping's (30)
    return callback


class _Fitter:
    """Fits LightGBM candidates on one matrix's slices (views, no copies)."""

    def __init__(self, data: TrainingData, params: TrainParams, base: dict[str, Any]) -> None:
        self.data, self.params, self.base = data, params, base
        n_fit, n_stop = data.n_fit, data.n_stop
        self.n_core = n_fit - data.n_select
        self.stop = (data.x[n_fit:n_fit + n_stop], data.y[n_fit:n_fit + n_stop])
        self.selection = (data.x[self.n_core:n_fit], data.y[self.n_core:n_fit])
        self.cat = data.feature_map.categorical_indices()

    def fit(self, extra: dict[str, Any], rows: int, deadline: float | None = None
            ) -> lgb.Booster:
        """A booster with the base params overridden by `extra`, fit on the first `rows`."""
        data, params = self.data, self.params
        fit_set = lgb.Dataset(data.x[:rows], data.y[:rows],
                              feature_name=data.feature_map.features,
                              categorical_feature=self.cat, free_raw_data=True)
        callbacks = [] if deadline is None else [_deadline_callback(deadline)]
        kwargs: dict[str, Any] = {}
        if len(self.stop[0]):
            stop_set = lgb.Dataset(*self.stop, reference=fit_set, categorical_feature=self.cat)
            kwargs = {"valid_sets": [stop_set], "valid_names": ["early_stopping"]}
            callbacks.append(lgb.early_stopping(params.early_stopping_rounds,
                                                first_metric_only=True, verbose=False))
        try:
            return lgb.train({**self.base, **extra}, fit_set,
                             num_boost_round=params.num_boost_round, callbacks=callbacks,
                             **kwargs)
        except lgb.basic.LightGBMError as exc:
            raise DataError(f"stages.train.params.search: LightGBM refused a candidate "
                            f"({extra}): {exc}") from None

    def candidate(self, trial: int, extra: dict[str, Any], deadline: float | None,
                  metric: str, note: str = "") -> Candidate:
        """Fit on the core fitting rows, measure on the selection slice."""
        started = time.monotonic()
        booster = self.fit(extra, self.n_core, deadline)
        rounds = int(booster.best_iteration) or booster.current_iteration()
        pred = np.asarray(booster.predict(self.selection[0], num_iteration=rounds))
        cut = deadline is not None and time.monotonic() > deadline
        value = metric_value(metric, self.selection[1], pred)
        return Candidate(trial, "lightgbm", extra, value, time.monotonic() - started, rounds,
                         "; ".join(n for n in (note, "cut by budget_seconds" if cut else "")
                                   if n), standard_error(metric, self.selection[1], pred, value))


def predict(model: lgb.Booster | LinearModel, x: np.ndarray) -> np.ndarray:
    """A model's predictions for matrix rows `x` (a booster at its best iteration)."""
    if isinstance(model, LinearModel):
        return model.predict(x)
    return np.asarray(model.predict(x, num_iteration=int(model.best_iteration)
                                    or model.current_iteration()))


def _linear(data: TrainingData, fitter: _Fitter, metric: str, seed: int, trial: int,
            l2: float) -> Candidate:
    started = time.monotonic()
    model = linear_baseline.fit(fitter.params.objective, data.x[:fitter.n_core],
                                data.y[:fitter.n_core], fitter.cat, seed, l2)
    pred = model.predict(fitter.selection[0])
    value = metric_value(metric, fitter.selection[1], pred)
    return Candidate(trial, "linear", linear_baseline.description(model, fitter.n_core), value,
                     time.monotonic() - started, None, "linear baseline",
                     standard_error(metric, fitter.selection[1], pred, value))


def _check_slices(data: TrainingData, metric: str) -> None:
    if data.n_select == 0 or data.n_fit - data.n_select == 0:
        raise DataError("stages.train.params.search: no rows left for the selection slice or "
                        "for fitting; change search.selection_fraction")
    y_sel = data.y[data.n_fit - data.n_select:data.n_fit]
    if metric == "auc" and len(np.unique(y_sel)) < 2:
        raise DataError("stages.train.params.search: the selection slice holds one class only, "
                        "so AUC is undefined there; raise search.selection_fraction or set "
                        "search.metric: logloss")


def run_search(data: TrainingData, params: TrainParams, base: dict[str, Any]) -> SearchResult:
    """Try candidates within the budget, refit the winner and the spec's params; rank all."""
    import optuna  # the search extra; imported only when a spec asks for a search

    assert params.search is not None
    search, metric = params.search, params.search_metric
    _check_slices(data, metric)
    base = {**{k: v for k, v in base.items() if canonical_names().get(k, k) not in SEARCHED},
            "metric": LIGHTGBM_METRIC[metric]}
    fitter = _Fitter(data, params, base)
    started = time.monotonic()
    deadline = started + search.budget_seconds
    board: list[Candidate] = []
    if search.linear_baseline and params.objective in ("binary", "regression"):
        # a few penalties, strongest first (trial -1): a linear model's own small search
        board += [_linear(data, fitter, metric, search.seed, -1 - k, l2)
                  for k, l2 in enumerate(linear_baseline.L2_GRID)]
    board.append(fitter.candidate(0, spec_candidate_params(params), deadline, metric,
                                  "the spec's params"))
    # The budget is the whole search's: keep time for the two fits after the
    # trials (the winner's refit and the spec's params' model), estimated from
    # the spec's fit scaled to the rows they fit on.
    reserve = 2 * board[-1].seconds * data.n_fit / max(1, fitter.n_core)
    trials_end = deadline - reserve

    def objective(trial: optuna.Trial) -> float:
        found = fitter.candidate(trial.number + 1, sample(trial, fitter.n_core), trials_end,
                                 metric)
        board.append(found)
        # Optuna needs a number; an undefined metric ranks last.
        return found.metric if not math.isnan(found.metric) else \
            (-math.inf if metric in MAXIMIZE else math.inf)

    remaining = trials_end - time.monotonic()
    if search.max_trials > 1 and remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize" if metric in MAXIMIZE else "minimize",
            sampler=optuna.samplers.TPESampler(seed=search.seed))
        study.optimize(objective, n_trials=search.max_trials - 1, timeout=remaining)
    searched_seconds = time.monotonic() - started
    found = _finish(data, params, fitter, board, metric, searched_seconds)
    found.summary["refit_reserve_seconds"] = round(reserve, 3)
    return found


def choose(board: list[Candidate], metric: str) -> tuple[Candidate, str]:
    """The winner: the simplest candidate within one standard error of the best.

    The best on a small selection slice is partly luck (the more candidates,
    the more luck), so a lead smaller than the noise does not buy the risk:
    the linear model, else the spec's params, is kept when it is within one
    standard error of the best (the "one-SE rule"); otherwise the best wins.
    On large slices the error is small and the best wins. Ties keep the
    earlier trial; NaN metrics never win.
    """
    trees = [c for c in board if c.kind == "lightgbm"]
    best = trees[0]
    for c in [*trees[1:], *(c for c in board if c.kind == "linear")]:
        if better(metric, c.metric, best.metric):
            best = c
    if math.isnan(best.se):
        return best, "best"
    margin = best.se if metric in MAXIMIZE else -best.se
    simpler = [c for c in board if c.kind == "linear"] + [trees[0]]
    for c in simpler:
        if c is best:
            return best, "best"
        if not math.isnan(c.metric) and not better(metric, best.metric - margin, c.metric):
            return c, f"one-SE rule: within {_round(best.se)} of trial {best.trial}"
    return best, "best"


def _finish(data: TrainingData, params: TrainParams, fitter: _Fitter, board: list[Candidate],
            metric: str, searched_seconds: float) -> SearchResult:
    assert params.search is not None
    trees = [c for c in board if c.kind == "lightgbm"]
    linear = [c for c in board if c.kind == "linear"]
    winner, chosen_by = choose(board, metric)
    best_linear = None
    for c in linear:
        if best_linear is None or better(metric, c.metric, best_linear.metric):
            best_linear = c
    cut = any("cut by" in c.note for c in trees)
    stopped_by = "max_trials" if len(trees) >= params.search.max_trials and not cut \
        else "budget_seconds"
    refit_started = time.monotonic()
    # The spec's params fit exactly as train does without a search: the model
    # the search must beat on validation, and the model when they win.
    default = _fit(data, params)
    booster: lgb.Booster | LinearModel = default
    if winner.kind == "linear":
        # no early stopping to feed: it refits on every row but the validation rows
        rows = data.n_fit + data.n_stop
        booster = linear_baseline.fit(params.objective, data.x[:rows], data.y[:rows],
                                      fitter.cat, params.search.seed, winner.params["l2"])
    elif winner.trial != 0:
        booster = fitter.fit(winner.params, data.n_fit)
    x_valid, y_valid = data.valid
    valid = {name: metric_value(metric, y_valid, predict(b, x_valid))
             for name, b in (("winner", booster), ("spec_params", default))}
    sign = 1 if metric in MAXIMIZE else -1
    ranked = sorted(board, key=lambda c: (math.isnan(c.metric), -sign * c.metric
                                          if not math.isnan(c.metric) else 0, c.trial))
    warnings: list[str] = []
    summary = {
        "metric": metric, "direction": "maximize" if metric in MAXIMIZE else "minimize",
        "candidates": len(trees), "stopped_by": stopped_by,
        "budget_seconds": params.search.budget_seconds, "max_trials": params.search.max_trials,
        "seed": params.search.seed, "search_seconds": round(searched_seconds, 3),
        "refit_seconds": round(time.monotonic() - refit_started, 3),
        "rows": {"fit": fitter.n_core, "early_stopping": data.n_stop,
                 "selection": data.n_select, "valid": len(y_valid)},
        "winner": winner.row(), "chosen_by": chosen_by,
        "spec_params_selection": _round(trees[0].metric),
        "winner_valid": _round(valid["winner"]), "spec_params_valid": _round(valid["spec_params"]),
        "gain_valid": _round(sign * (valid["winner"] - valid["spec_params"])),
        "linear_baseline_selection": _round(best_linear.metric) if best_linear else None,
        "leaderboard_top": [c.row(i + 1) for i, c in enumerate(ranked[:LEADERBOARD_TOP])],
    }
    leaderboard = {key: summary[key] for key in ("metric", "direction", "stopped_by", "rows",
                                                  "search_seconds")}
    leaderboard["candidates"] = [c.row(i + 1) for i, c in enumerate(ranked)]
    log.info("search: %d candidates (%s), winner trial %d %s %.4f on selection, %s on "
             "validation vs %s with the spec's params", len(trees), stopped_by, winner.trial,
             metric, winner.metric, summary["winner_valid"], summary["spec_params_valid"])
    return SearchResult(booster, default, summary, leaderboard, warnings)


def fleet_leaderboard(segments: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per segment with its search's winner, from each model's `metrics["search"]`.

    For the fleet's summary: segment name -> the `search` entry of that
    segment's model metrics. Segments without a search are listed as such.
    """
    rows = []
    for name in sorted(segments):
        found = segments[name]
        if not found:
            rows.append({"segment": name, "search": None})
            continue
        winner = found["winner"]
        rows.append({"segment": name, "metric": found["metric"],
                     "winner_trial": winner["trial"], "winner_params": winner["params"],
                     "winner_selection": winner["metric"], "winner_valid": found["winner_valid"],
                     "spec_params_valid": found["spec_params_valid"],
                     "gain_valid": found["gain_valid"], "candidates": found["candidates"],
                     "stopped_by": found["stopped_by"]})
    return rows
