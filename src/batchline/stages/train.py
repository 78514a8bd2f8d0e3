"""train: LightGBM on the labelled rows, validated on the most recent ones.

The training matrix is filled batch by batch straight from the committed
features dataset, with fitting rows from the top and the most recent
(validation) rows from the bottom, so memory holds one float32 matrix and no
Arrow copy of the table. The model is saved in LightGBM's own text format
(never pickle) together with `model.json`: the feature map, the label, the
metrics and the sha256 of `model.txt`, so score can refuse a changed file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batchline import storage
from batchline.errors import DataError
from batchline.metrics import auc, calibration, log_loss
from batchline.params import TrainParams
from batchline.stages.matrix import FeatureMap
from batchline.task import StageTask

log = logging.getLogger(__name__)
BATCH_ROWS = 200_000


@dataclass(frozen=True)
class TrainingData:
    """Fitting rows then validation rows of one matrix (slices are views)."""

    x: np.ndarray
    y: np.ndarray
    n_fit: int
    feature_map: FeatureMap


@dataclass(frozen=True)
class TrainedModel:
    text: str
    feature_map: FeatureMap
    metrics: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _days(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Time values as int64 numbers that sort like the times (dates, timestamps, numbers)."""
    if pa.types.is_date(values.type) or pa.types.is_timestamp(values.type):
        values = values.cast(pa.int64()) if pa.types.is_timestamp(values.type) else \
            values.cast(pa.date32()).cast(pa.int32()).cast(pa.int64())
    return np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False))


def _check_columns(schema: pa.Schema, params: TrainParams) -> None:
    for field_name, column in (("label", params.label), ("time_column", params.time_column)):
        if column not in schema.names:
            raise DataError(f"stages.train.params.{field_name}: {column!r} is not a column of "
                            f"the features table ({schema.names})")


def load_training_data(dataset: ds.Dataset, params: TrainParams) -> TrainingData:
    """Scan the labelled rows twice: first times and categories, then the matrix."""
    _check_columns(dataset.schema, params)
    labelled = ds.field(params.label).is_valid()
    times, vocab = [], {c: set[str]() for c in params.categorical}
    for c in params.categorical:
        if c not in dataset.schema.names:
            raise DataError(f"stages.train.params.categorical: {c!r} is not a column of the "
                            "features table")
    for batch in dataset.to_batches(columns=[params.time_column, *params.categorical],
                                    filter=labelled, batch_size=BATCH_ROWS):
        times.append(_days(batch.column(params.time_column)))
        for c in params.categorical:
            vocab[c].update(pc.unique(batch.column(c).cast(pa.string())).drop_null().to_pylist())
    all_times = np.concatenate(times) if times else np.empty(0)
    n = len(all_times)
    if n < 100:
        raise DataError(f"only {n} labelled rows; train needs at least 100")
    cut = np.sort(all_times)[int(n * (1 - params.valid_fraction))]
    n_fit = int((all_times < cut).sum())
    del times, all_times
    if n_fit == 0 or n_fit == n:
        raise DataError(f"stages.train.params.time_column: {params.time_column!r} cannot split "
                        "the labelled rows by time (all rows share one value)")
    exclude = {params.label, params.time_column, *params.exclude}
    fmap = FeatureMap.from_schema(dataset.schema, exclude,
                                  {c: sorted(v) for c, v in vocab.items()})
    x = np.empty((n, len(fmap.features)), dtype=np.float32)
    y = np.empty(n, dtype=np.float32)
    top, bottom = 0, n_fit
    columns = list(dict.fromkeys([*fmap.features, params.label, params.time_column]))
    for batch in dataset.to_batches(columns=columns, filter=labelled, batch_size=BATCH_ROWS):
        is_fit = _days(batch.column(params.time_column)) < cut
        for mask, start in ((is_fit, top), (~is_fit, bottom)):
            part = batch.filter(pa.array(mask))
            end = start + part.num_rows
            fmap.matrix(part, out=x[start:end])
            y[start:end] = part.column(params.label).cast(pa.float32()).to_numpy(
                zero_copy_only=False)
        top += int(is_fit.sum())
        bottom += int((~is_fit).sum())
    if set(np.unique(y).tolist()) - {0.0, 1.0}:
        raise DataError(f"stages.train.params.label: {params.label!r} must be 0 or 1")
    return TrainingData(x, y, n_fit, fmap)


def train(data: TrainingData, params: TrainParams) -> TrainedModel:
    """Fit a LightGBM binary classifier with early stopping on the validation rows."""
    fmap, n_fit = data.feature_map, data.n_fit
    x_valid, y_valid = data.x[n_fit:], data.y[n_fit:]
    booster_params = {
        "objective": "binary", "metric": ["auc", "binary_logloss"],
        "num_leaves": params.num_leaves, "learning_rate": params.learning_rate,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": params.feature_fraction, "num_threads": params.num_threads,
        "seed": params.seed, "deterministic": True, "force_col_wise": True, "verbosity": -1,
    }
    cat = fmap.categorical_indices()
    fit_set = lgb.Dataset(data.x[:n_fit], data.y[:n_fit], feature_name=fmap.features,
                          categorical_feature=cat, free_raw_data=True)
    valid_set = lgb.Dataset(x_valid, y_valid, reference=fit_set, categorical_feature=cat)
    booster = lgb.train(booster_params, fit_set, num_boost_round=params.num_boost_round,
                        valid_sets=[valid_set], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(params.early_stopping_rounds,
                                                      verbose=False)])
    p_valid = np.asarray(booster.predict(x_valid, num_iteration=booster.best_iteration))
    gains = booster.feature_importance("gain", iteration=booster.best_iteration)
    top = sorted(zip(fmap.features, gains.tolist(), strict=True), key=lambda t: -t[1])[:10]
    metrics = {
        "auc_valid": round(auc(y_valid, p_valid), 5),
        "logloss_valid": round(log_loss(y_valid, p_valid), 5),
        "calibration_valid": calibration(y_valid, p_valid, params.calibration_bins),
        "best_iteration": int(booster.best_iteration),
        "rows_fit": n_fit, "rows_valid": len(y_valid),
        "prevalence_valid": round(float(y_valid.mean()), 5),
        "importance_gain_top": [[n, round(g, 1)] for n, g in top],
    }
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    return TrainedModel(text, fmap, metrics)


def run(task: StageTask) -> dict[str, Any]:
    """Train on the committed features; commit `model` (model.txt + model.json)."""
    params = TrainParams(**task.params)
    data = load_training_data(storage.open_dataset(task.inputs["features"]), params)
    model = train(data, params)
    card = {"label": params.label, "feature_map": json.loads(model.feature_map.to_json()),
            "model_sha256": model.sha256, "model_version": model.sha256[:12],
            "lightgbm": lgb.__version__, "metrics": model.metrics, "trained_in_run": task.run_id}
    with task.writer("model") as out:
        out.write_file("model.txt", model.text.encode())
        out.write_file("model.json", json.dumps(card, indent=2, sort_keys=True).encode())
        out.commit({**model.metrics, "model_sha256": model.sha256,
                    "model_version": model.sha256[:12],
                    "calibration_ece": model.metrics["calibration_valid"]["ece"],
                    "rows": model.metrics["rows_fit"] + model.metrics["rows_valid"]})
    log.info("train: validation AUC %.4f at iteration %d", model.metrics["auc_valid"],
             model.metrics["best_iteration"])
    return {"auc_valid": model.metrics["auc_valid"], "model_version": model.sha256[:12]}
