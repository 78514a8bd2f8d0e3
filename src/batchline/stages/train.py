"""train: LightGBM on the labelled rows, validated on the most recent ones.

The model is saved in LightGBM's own text format (never pickle) together with
`model.json`: the feature map, the label, the metrics and the sha256 of
`model.txt`, so score can refuse a model file that was changed.
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


@dataclass(frozen=True)
class TrainedModel:
    text: str
    feature_map: FeatureMap
    metrics: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def time_split(table: pa.Table, time_column: str, valid_fraction: float
               ) -> tuple[pa.Table, pa.Table]:
    """Sort by time and hold out the most recent `valid_fraction` of rows."""
    if time_column not in table.column_names:
        raise DataError(f"stages.train.params.time_column: {time_column!r} is not a column of "
                        f"the features table")
    table = table.sort_by([(time_column, "ascending")])
    cut = int(table.num_rows * (1 - valid_fraction))
    return table.slice(0, cut), table.slice(cut)


def train(features: pa.Table, params: TrainParams) -> TrainedModel:
    """Fit a LightGBM binary classifier on labelled rows with early stopping."""
    if params.label not in features.column_names:
        raise DataError(f"stages.train.params.label: {params.label!r} is not a column of the "
                        f"features table")
    labelled = features.filter(pc.is_valid(features.column(params.label)))
    if labelled.num_rows < 100:
        raise DataError(f"only {labelled.num_rows} labelled rows; train needs at least 100")
    fit_rows, valid_rows = time_split(labelled, params.time_column, params.valid_fraction)
    exclude = {params.label, params.time_column, *params.exclude}
    fmap = FeatureMap.learn(fit_rows, exclude, params.categorical)
    y_fit = fit_rows.column(params.label).to_numpy().astype(np.float64)
    y_valid = valid_rows.column(params.label).to_numpy().astype(np.float64)
    if set(np.unique(y_fit)) - {0.0, 1.0}:
        raise DataError(f"label {params.label!r} must be 0 or 1")
    booster_params = {
        "objective": "binary", "metric": ["auc", "binary_logloss"],
        "num_leaves": params.num_leaves, "learning_rate": params.learning_rate,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": params.feature_fraction, "num_threads": params.num_threads,
        "seed": params.seed, "deterministic": True, "force_col_wise": True, "verbosity": -1,
    }
    cat = fmap.categorical_indices()
    fit_set = lgb.Dataset(fmap.matrix(fit_rows), y_fit, feature_name=fmap.features,
                          categorical_feature=cat, free_raw_data=True)
    valid_set = lgb.Dataset(fmap.matrix(valid_rows), y_valid, reference=fit_set,
                            categorical_feature=cat)
    booster = lgb.train(booster_params, fit_set, num_boost_round=params.num_boost_round,
                        valid_sets=[valid_set], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(params.early_stopping_rounds,
                                                      verbose=False)])
    p_valid = np.asarray(booster.predict(fmap.matrix(valid_rows),
                                         num_iteration=booster.best_iteration))
    gains = booster.feature_importance("gain", iteration=booster.best_iteration)
    top = sorted(zip(fmap.features, gains.tolist(), strict=True), key=lambda t: -t[1])[:10]
    metrics = {
        "auc_valid": round(auc(y_valid, p_valid), 5),
        "logloss_valid": round(log_loss(y_valid, p_valid), 5),
        "calibration_valid": calibration(y_valid, p_valid, params.calibration_bins),
        "best_iteration": int(booster.best_iteration),
        "rows_fit": fit_rows.num_rows, "rows_valid": valid_rows.num_rows,
        "prevalence_valid": round(float(y_valid.mean()), 5),
        "importance_gain_top": [[n, round(g, 1)] for n, g in top],
    }
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    return TrainedModel(text, fmap, metrics)


def run(task: StageTask) -> dict[str, Any]:
    """Train on the committed features; commit `model` (model.txt + model.json)."""
    params = TrainParams(**task.params)
    dataset: ds.Dataset = storage.open_dataset(task.inputs["features"])
    if params.label not in dataset.schema.names:
        raise DataError(f"stages.train.params.label: {params.label!r} is not a column of "
                        f"{task.inputs['features']}")
    table = dataset.to_table(filter=ds.field(params.label).is_valid())
    model = train(table, params)
    meta = {"run_id": task.run_id, "stage": task.stage, "cache_key": task.cache_key}
    card = {"label": params.label, "feature_map": json.loads(model.feature_map.to_json()),
            "model_sha256": model.sha256, "model_version": model.sha256[:12],
            "lightgbm": lgb.__version__, "metrics": model.metrics, "trained_in_run": task.run_id}
    with storage.DatasetWriter(task.outputs["model"]) as out:
        out.write_file("model.txt", model.text.encode())
        out.write_file("model.json", json.dumps(card, indent=2, sort_keys=True).encode())
        out.commit({**model.metrics, "model_sha256": model.sha256,
                    "model_version": model.sha256[:12]}, meta)
    log.info("train: validation AUC %.4f at iteration %d", model.metrics["auc_valid"],
             model.metrics["best_iteration"])
    return {"auc_valid": model.metrics["auc_valid"], "model_version": model.sha256[:12]}
