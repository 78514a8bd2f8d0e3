"""train: LightGBM on the labelled rows, judged on rows it never touched.

Labelled rows are split three ways: validation rows (by time, at random, or
by whole groups such as patients), then an early-stopping slice carved the
same way from the training side, and the fitting rows that remain. The
validation metrics are computed on rows used neither to fit nor to decide
when to stop, so they are not optimistic.

The training matrix is filled batch by batch straight from the committed
features dataset, each row written at its role's place (fit rows first, then
early-stopping rows, then validation rows), so memory holds one float32
matrix and no Arrow copy of the table. The model is saved in LightGBM's own
text format (never pickle) together with `model.json`: the objective, the
classes, the feature map, the split, the metrics and the sha256 of
`model.txt`, so score can refuse a changed file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batchline import cpu, storage
from batchline.errors import DataError, SpecError
from batchline.metrics import (
    accuracy,
    auc,
    calibration,
    log_loss,
    mae,
    multi_log_loss,
    r2,
    recorded_ece,
    rmse,
    roc_curve,
)
from batchline.params import GroupSplit, RandomSplit, TimeSplit, TrainParams
from batchline.stages import drift
from batchline.stages import split as splits
from batchline.stages.labels import check_label_type, code_labels
from batchline.stages.lgb_params import lightgbm_param_problems
from batchline.stages.matrix import FeatureMap, arrow_data_errors, plan_features
from batchline.task import StageTask

log = logging.getLogger(__name__)
BATCH_ROWS = 200_000
MIN_ROWS = 100
MANY_CATEGORIES = 1_000


@dataclass(frozen=True)
class TrainingData:
    """Fitting, early-stopping and validation rows of one matrix, in that order.

    With a search, the last `n_select` of the `n_fit` fitting rows are its
    selection slice: candidates fit on the rows before them and are judged on
    them; the winner is refit on all `n_fit`.
    """

    x: np.ndarray
    y: np.ndarray
    n_fit: int
    n_stop: int
    feature_map: FeatureMap
    classes: list[Any] | None
    split: dict[str, Any]
    warnings: list[str]
    n_select: int = 0

    @property
    def valid(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation rows (views, no copy)."""
        start = self.n_fit + self.n_stop
        return self.x[start:], self.y[start:]


@dataclass(frozen=True)
class TrainedModel:
    """LightGBM's model text with what score needs to use it and what it scored."""

    text: str
    feature_map: FeatureMap
    metrics: dict[str, Any]
    leaderboard: dict[str, Any] | None = None  # every candidate of a search, when there was one
    kind: str = "lightgbm"  # or "linear" (a search's linear winner, JSON text)
    # its predictions for the validation rows (the drift profile's reference; not saved)
    valid_predictions: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def sha256(self) -> str:
        """Checksum of the model text, recorded in model.json and checked by score."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def _split_column(spec: TimeSplit | RandomSplit | GroupSplit) -> str | None:
    return spec.column if isinstance(spec, TimeSplit | GroupSplit) else None


def _check_columns(schema: pa.Schema, params: TrainParams) -> None:
    spec = params.effective_split
    fields = [("label", params.label)]
    column = _split_column(spec)
    if column is not None:
        fields.append(("split.column" if params.split else "time_column", column))
    for field_name, name in fields:
        if name not in schema.names:
            raise DataError(f"stages.train.params.{field_name}: {name!r} is not a column of "
                            f"the features table ({schema.names})")
    check_label_type(params.label, schema.field(params.label).type, params.objective)


def _first_scan(dataset: ds.Dataset, params: TrainParams, categorical: list[str]
                ) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None, dict[str, list[str]]]:
    """Labels, split column and categorical vocabularies of the labelled rows."""
    split_col = _split_column(params.effective_split)
    columns = list(dict.fromkeys([params.label, *([split_col] if split_col else []),
                                  *categorical]))
    labels, keys, vocab = [], [], {c: set[str]() for c in categorical}
    for batch in dataset.to_batches(columns=columns, filter=ds.field(params.label).is_valid(),
                                    batch_size=BATCH_ROWS):
        labels.append(batch.column(params.label))
        if split_col:
            keys.append(batch.column(split_col))
        for c in categorical:
            vocab[c].update(pc.unique(batch.column(c).cast(pa.string())).drop_null().to_pylist())
    schema = dataset.schema
    label_values = pa.chunked_array(labels, schema.field(params.label).type)
    key_values = pa.chunked_array(keys, schema.field(split_col).type) if split_col else None
    return label_values, key_values, {c: sorted(v) for c, v in vocab.items()}


def split_rows(params: TrainParams, keys: pa.ChunkedArray | None, n: int) -> splits.Roles:
    """Each labelled row's role under the spec's split, with the report of the cut."""
    spec = params.effective_split
    select = params.search.selection_fraction if params.search is not None else 0.0
    if isinstance(spec, RandomSplit):
        return splits.assign_roles(spec, np.arange(n), params.early_stopping_fraction,
                                   spec.seed, selection_fraction=select)
    assert keys is not None
    if isinstance(spec, GroupSplit):
        return splits.assign_roles(spec, splits.group_codes(keys),
                                   params.early_stopping_fraction, spec.seed,
                                   selection_fraction=select)
    if keys.null_count:
        raise DataError(f"stages.train.params.{'split.column' if params.split else 'time_column'}"
                        f": {keys.null_count} labelled rows have no {spec.column!r} value; "
                        "fill or filter them in the feature SQL")
    cutoff = None if spec.cutoff is None else splits.cutoff_key(spec.cutoff, keys.type)
    return splits.assign_roles(spec, splits.time_keys(keys), params.early_stopping_fraction,
                               params.seed, keys.type, cutoff, selection_fraction=select)


def _split_warnings(roles: splits.Roles) -> list[str]:
    report, out = roles.report, []
    asked, got = report.get("fraction_requested"), report["fractions"]["valid"]
    if asked is not None and abs(asked - got) > 0.05:
        out.append(f"split: {asked} of rows was asked to be held out but {got} is (rows that "
                   "share a value stay on one side); see split.cut in the model card")
    for name, role in (("validation", splits.VALID), ("early-stopping", splits.EARLY_STOPPING),
                       ("search selection", splits.SELECTION)):
        if 0 < roles.count(role) < 200:
            out.append(f"only {roles.count(role)} {name} rows: its metrics are noisy")
    return out


def _fill_matrix(dataset: ds.Dataset, params: TrainParams, fmap: FeatureMap,
                 roles: np.ndarray) -> np.ndarray:
    """The feature matrix with rows grouped by role (fit, early stopping, validation).

    `roles` are matrix ranks (split.MATRIX_RANK): 0-3, in the order the rows sit.
    """
    counts = np.bincount(roles, minlength=4)
    x = np.empty((len(roles), len(fmap.features)), dtype=np.float32)
    next_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offset = 0
    for batch in dataset.to_batches(columns=fmap.features,
                                    filter=ds.field(params.label).is_valid(),
                                    batch_size=BATCH_ROWS):
        batch_roles = roles[offset:offset + batch.num_rows]
        offset += batch.num_rows
        for role in range(4):
            mask = batch_roles == role
            k = int(mask.sum())
            if k:
                start = int(next_row[role])
                fmap.matrix(batch.filter(pa.array(mask)), out=x[start:start + k])
                next_row[role] += k
    if offset != len(roles):  # a committed dataset never changes; this guards the code
        raise RuntimeError(f"features scanned twice gave {len(roles)} then {offset} rows")
    return x


def load_training_data(dataset: ds.Dataset, params: TrainParams) -> TrainingData:
    """Check the label, split the labelled rows and build the matrix (two scans)."""
    _check_columns(dataset.schema, params)
    split_col = _split_column(params.effective_split)
    exclude = {params.label, *params.exclude, *([split_col] if split_col else [])}
    plan = plan_features(dataset.schema, exclude, params.categorical, params.exclude)
    label_values, keys, vocab = _first_scan(dataset, params, plan.categorical)
    n = len(label_values)
    if n < MIN_ROWS:
        raise DataError(f"only {n} labelled rows (stages.train.params.label "
                        f"{params.label!r} not empty); train needs at least {MIN_ROWS}")
    labels = code_labels(params.label, label_values, params.objective)
    del label_values
    roles = split_rows(params, keys, n)
    fmap = FeatureMap(plan.features, vocab)
    # A text column nobody listed with thousands of values is usually an id
    # or free text: worth saying, since it inflates the model card too.
    many = [f"column {c!r} has {len(vocab[c])} distinct values: if it is an id or free text, "
            "add it to stages.train.params.exclude" for c in plan.categorical
            if c not in params.categorical and len(vocab[c]) > MANY_CATEGORIES]
    ranks = splits.MATRIX_RANK[roles.roles]
    x = _fill_matrix(dataset, params, fmap, ranks)
    order = np.argsort(ranks, kind="stable")  # same order as the matrix rows
    n_select = roles.count(splits.SELECTION)
    return TrainingData(x, labels.y[order], roles.count(splits.FIT) + n_select,
                        roles.count(splits.EARLY_STOPPING), fmap, labels.classes, roles.report,
                        [*plan.warnings, *many, *_split_warnings(roles)], n_select)


def booster_params(params: TrainParams, classes: list[Any] | None) -> dict[str, Any]:
    """LightGBM parameters: the objective's own, the spec's fields, then `lightgbm:` extras."""
    problems = lightgbm_param_problems(params.lightgbm)
    if problems:  # also checked at spec validation when LightGBM is installed there
        raise SpecError("; ".join(f"stages.train.params.{p}" for p in problems))
    by_objective: dict[str, dict[str, Any]] = {
        "binary": {"objective": "binary", "metric": ["auc", "binary_logloss"]},
        "regression": {"objective": "regression", "metric": ["rmse"]},
        "multiclass": {"objective": "multiclass", "metric": ["multi_logloss"],
                       "num_class": len(classes or [])},
    }
    objective = by_objective[params.objective]
    return {
        **objective,
        "num_leaves": params.num_leaves, "learning_rate": params.learning_rate,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": params.feature_fraction, "num_threads": cpu.threads(params.num_threads),
        "seed": params.seed, "deterministic": True, "force_col_wise": True, "verbosity": -1,
        **params.lightgbm,
    }


def _fit(data: TrainingData, params: TrainParams) -> lgb.Booster:
    fmap, n_fit, n_stop = data.feature_map, data.n_fit, data.n_stop
    cat = fmap.categorical_indices()
    fit_set = lgb.Dataset(data.x[:n_fit], data.y[:n_fit], feature_name=fmap.features,
                          categorical_feature=cat, free_raw_data=True)
    kwargs: dict[str, Any] = {}
    if n_stop:
        stop_set = lgb.Dataset(data.x[n_fit:n_fit + n_stop], data.y[n_fit:n_fit + n_stop],
                               reference=fit_set, categorical_feature=cat)
        kwargs = {"valid_sets": [stop_set], "valid_names": ["early_stopping"],
                  "callbacks": [lgb.early_stopping(params.early_stopping_rounds, verbose=False)]}
    try:
        return lgb.train(booster_params(params, data.classes), fit_set,
                         num_boost_round=params.num_boost_round, **kwargs)
    except lgb.basic.LightGBMError as exc:
        # LightGBM refuses data (labels, categories) and parameter values the
        # same way; both are deterministic, so retrying cannot help.
        raise DataError(f"stages.train: LightGBM refused the data or stages.train.params."
                        f"lightgbm: {exc}") from None


def validation_metrics(objective: str, y: np.ndarray, pred: np.ndarray, y_fit: np.ndarray,
                       params: TrainParams) -> dict[str, Any]:
    """The objective's metrics on the validation rows, with a naive baseline to compare."""
    if objective == "binary":
        return {"auc_valid": round(auc(y, pred), 5),
                "logloss_valid": round(log_loss(y, pred), 5),
                "calibration_valid": calibration(y, pred, params.calibration_bins),
                # about 50 points: enough to draw the curve in the run report
                "roc_valid": roc_curve(y, pred),
                "prevalence_valid": round(float(y.mean()), 5)}
    if objective == "regression":
        baseline = np.full(len(y), float(y_fit.mean()))
        return {"rmse_valid": round(rmse(y, pred), 5), "mae_valid": round(mae(y, pred), 5),
                "r2_valid": round(r2(y, pred), 5),
                "rmse_baseline_valid": round(rmse(y, baseline), 5),
                "mean_label_valid": round(float(y.mean()), 5)}
    k = pred.shape[1]
    prior = np.bincount(y_fit.astype(np.int64), minlength=k) / len(y_fit)
    return {"multi_logloss_valid": round(multi_log_loss(y, pred), 5),
            "accuracy_valid": round(accuracy(y, pred), 5),
            "multi_logloss_baseline_valid": round(
                multi_log_loss(y, np.tile(prior, (len(y), 1))), 5),
            "accuracy_baseline_valid": round(float(np.mean(y == np.argmax(prior))), 5),
            "class_counts_valid": np.bincount(y.astype(np.int64), minlength=k).tolist()}


def train(data: TrainingData, params: TrainParams) -> TrainedModel:
    """Fit LightGBM for the objective, stopping early on its own slice; measure on validation.

    With `params.search`, the model is the search's winner (stages/search.py):
    a LightGBM booster, or a linear model saved as JSON text; the model
    carries the search's leaderboard.
    """
    if params.search is None:
        return _measured(_fit(data, params), data, params)
    from batchline.stages.linear_baseline import LinearModel
    from batchline.stages.search import run_search  # Optuna only when a spec asks for it

    found = run_search(data, params, booster_params(params, data.classes))
    if isinstance(found.booster, LinearModel):
        x_valid = data.valid[0]
        linear = found.booster
        model = _described(data, params, linear.predict(x_valid), 0, linear.to_json(),
                           ("importance_weight_top",
                            linear.importance(len(data.feature_map.features)), 3), "linear")
    else:
        model = _measured(found.booster, data, params)
    model.metrics["search"] = found.summary
    model.metrics["warnings"] = [*model.metrics["warnings"], *found.warnings]
    return TrainedModel(model.text, model.feature_map, model.metrics, found.leaderboard,
                        model.kind, model.valid_predictions)


def _measured(booster: lgb.Booster, data: TrainingData, params: TrainParams) -> TrainedModel:
    best = int(booster.best_iteration) or booster.current_iteration()
    pred = np.asarray(booster.predict(data.valid[0], num_iteration=best))
    gains = booster.feature_importance("gain", iteration=best).tolist()
    return _described(data, params, pred, best, booster.model_to_string(num_iteration=best),
                      ("importance_gain_top", gains, 1))


def _described(data: TrainingData, params: TrainParams, pred: np.ndarray, best: int,
               text: str, importance: tuple[str, list[float], int],
               kind: str = "lightgbm") -> TrainedModel:
    """The model with its validation metrics (pred: its predictions for the valid rows)."""
    y_valid = data.valid[1]
    key, values, digits = importance
    top = sorted(zip(data.feature_map.features, values, strict=True), key=lambda t: -t[1])[:10]
    metrics = {
        "objective": params.objective,
        **validation_metrics(params.objective, y_valid, pred, data.y[:data.n_fit], params),
        "best_iteration": best,
        "rows_fit": data.n_fit, "rows_early_stopping": data.n_stop, "rows_valid": len(y_valid),
        "split": data.split,
        key: [[n, round(g, digits)] for n, g in top],
        "warnings": list(data.warnings),
    }
    if data.classes is not None:
        metrics["classes"] = data.classes
    return TrainedModel(text, data.feature_map, metrics, kind=kind, valid_predictions=pred)


def model_card(model: TrainedModel, params: TrainParams, run_id: str) -> dict[str, Any]:
    """model.json: everything score needs to use the model, and what it was judged on."""
    return {"label": params.label, "objective": params.objective,
            "classes": model.metrics.get("classes"),
            "feature_map": json.loads(model.feature_map.to_json()),
            "model_sha256": model.sha256, "model_version": model.sha256[:12],
            "lightgbm": lgb.__version__, "metrics": model.metrics, "trained_in_run": run_id,
            # only a search's linear winner says so: LightGBM cards stay as they were
            **({"model_kind": model.kind} if model.kind != "lightgbm" else {})}


def summary(model: TrainedModel) -> dict[str, Any]:
    """What run() returns: the headline metric of the objective, the version, any warnings."""
    headline = {"binary": "auc_valid", "regression": "rmse_valid",
                "multiclass": "multi_logloss_valid"}[model.metrics["objective"]]
    log.info("train: %s %.4f at iteration %d", headline, model.metrics[headline],
             model.metrics["best_iteration"])
    split = model.metrics["split"]
    log.info("train: split %s%s: fractions %s", split["kind"],
             f" at {split['cut']}" if "cut" in split else "", split["fractions"])
    for warning in model.metrics["warnings"]:
        log.warning("train: %s", warning)
    return {headline: model.metrics[headline], "model_version": model.sha256[:12],
            "warnings": model.metrics["warnings"]}


def commit_metrics(model: TrainedModel) -> dict[str, Any]:
    """The model's metrics for `_SUCCESS.json`, with the figures the summary shows."""
    metrics = {**model.metrics, "model_sha256": model.sha256,
               "model_version": model.sha256[:12],
               # every labelled row the model saw or was measured on
               "rows": sum(int(v) for k, v in model.metrics.items()
                           if k in ("rows_fit", "rows_early_stopping", "rows_valid"))}
    found = model.metrics.get("search")
    if found:  # the run summary's view of the search (see the train StageDef)
        metrics.update({"search_candidates": found["candidates"],
                        "search_stopped_by": found["stopped_by"],
                        "search_gain_valid": found["gain_valid"]})
    ece = recorded_ece(model.metrics)
    if ece is not None:
        metrics["calibration_ece"] = ece
    return metrics


PROFILE_ROWS = 200_000


def profile(model: TrainedModel, card: dict[str, Any], data: TrainingData,
            num_threads: int) -> dict[str, Any]:
    """The drift reference of a model: its rows' features (every k-th row, at most
    PROFILE_ROWS: bins of 200,000 rows are as good as of all of them) and its predictions
    for the validation rows, which it never saw, as it never saw the rows it will score
    (computed already for the metrics; predicted here only if they are missing)."""
    rows = data.x[::max(1, -(-len(data.x) // PROFILE_ROWS))]
    predictions = model.valid_predictions
    if predictions is None:
        from batchline.stages import score  # the same predictor score will use

        fitted = score.predictor(model.text.encode(), card, "model.json")
        predictions = np.asarray(fitted.predict(data.valid[0],
                                                num_threads=cpu.threads(num_threads)))
    return drift.reference(rows, predictions, model.feature_map)


def run(task: StageTask) -> dict[str, Any]:
    """Train on the committed features; commit `model` (model.txt + model.json +
    profile.json)."""
    params = TrainParams(**task.params)
    if params.segments is not None:
        from batchline.stages import fleet_train  # a fleet: one model per segment

        return fleet_train.run(task, params)
    with arrow_data_errors("train"):
        data = load_training_data(storage.open_dataset(task.inputs["features"]), params)
    model = train(data, params)
    card = model_card(model, params, task.run_id)
    with task.writer("model") as out:
        out.write_file("model.txt", model.text.encode())
        out.write_file("model.json", json.dumps(card, indent=2, sort_keys=True).encode())
        # What score's drift check compares each population with (no raw rows).
        out.write_file(drift.PROFILE, drift.dumps(profile(model, card, data,
                                                                params.num_threads)))
        if model.leaderboard is not None:
            out.write_file("leaderboard.json",
                           json.dumps(model.leaderboard, indent=2, sort_keys=True).encode())
        out.commit(commit_metrics(model))
    return summary(model)
