"""score: predictions for a declared population, streamed in record batches.

The population is the spec's choice (`stages.score.params.population`): rows
of the features table whose label is empty (the default), all of them, those
matching a DuckDB SQL predicate, or a separate Parquet source. Memory stays
bounded by `batch_rows` whatever the population size: rows are read one
batch at a time, and each batch's predictions are written before the next is
read. With `shards` > 1 each shard takes the rows whose first id column
modulo the shard count equals its index, and commits its own part; the
launcher publishes the union.

Outputs follow the model's objective: `score` (binary, the probability of 1),
`prediction` (regression), or one `p_<class>` probability column per class
plus `predicted_class` (multiclass). Zero rows scored is a warning in the
summary and in `_SUCCESS.json`, or an error when `allow_empty` is false.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from batchline import cpu, psi, storage
from batchline.errors import DataError, SpecError, StorageError
from batchline.metrics import recorded_ece
from batchline.params import ScoreParams, SourcePopulation, SqlPopulation
from batchline.stages import drift
from batchline.stages.linear_baseline import LinearModel
from batchline.stages.matrix import FeatureMap, arrow_data_errors
from batchline.task import StageTask

log = logging.getLogger(__name__)
_POPULATION = "stages.score.params.population"


# What score calls `predict` on: a LightGBM booster, or a search's linear winner.
Predictor = lgb.Booster | LinearModel
MODEL_KINDS = ("lightgbm", "linear")


def load_model(model_uri: str) -> tuple[Predictor, dict[str, Any]]:
    """Load model.txt and model.json from a committed model dataset, checking sha256.

    model.txt is LightGBM's text, or (card `model_kind: linear`) a linear
    model's JSON written by a search (stages/linear_baseline.py).
    """
    record = storage.committed(model_uri)
    files = {f.path.rsplit("/", 1)[-1]: f for f in record.files}
    if "model.txt" not in files or "model.json" not in files:
        raise StorageError(f"{model_uri} holds no model.txt/model.json; run train first")
    text = storage.read_bytes(storage.join(model_uri, files["model.txt"].path))
    card: dict[str, Any] = json.loads(storage.read_bytes(
        storage.join(model_uri, files["model.json"].path)))
    digest = hashlib.sha256(text).hexdigest()
    if digest != card["model_sha256"] or digest != files["model.txt"].sha256:
        raise DataError(f"{model_uri}/model.txt does not match its recorded sha256; the model "
                        "file was changed after training: retrain")
    card.setdefault("objective", "binary")  # model cards from before objectives existed
    return predictor(text, card, f"{model_uri}/model.json"), card


def predictor(text: bytes, card: dict[str, Any], where: str) -> Predictor:
    """The model in `text` as its card's `model_kind` says (`where` names the card)."""
    kind = card.get("model_kind", "lightgbm")
    if kind not in MODEL_KINDS:
        raise DataError(f"{where}: model_kind {kind!r} is not one this version "
                        f"can score ({', '.join(MODEL_KINDS)}); score with the batchline "
                        "version that trained it")
    if kind == "linear":
        return LinearModel.from_json(text.decode())
    return lgb.Booster(model_str=text.decode())


def _class_type(classes: list[Any]) -> pa.DataType:
    return pa.array(classes).type


def prediction_schema(id_fields: list[pa.Field], card: dict[str, Any] | None = None
                      ) -> pa.Schema:
    """Id columns, the objective's prediction columns, model version and run id."""
    objective = (card or {}).get("objective", "binary")
    if objective == "regression":
        outputs = [pa.field("prediction", pa.float64())]
    elif objective == "multiclass":
        classes = (card or {})["classes"]
        outputs = [*(pa.field(f"p_{c}", pa.float64()) for c in classes),
                   pa.field("predicted_class", _class_type(classes))]
    else:
        outputs = [pa.field("score", pa.float64())]
    return pa.schema([*id_fields, *outputs, pa.field("model_version", pa.string()),
                      pa.field("run_id", pa.string())])


def prediction_columns(raw: np.ndarray, card: dict[str, Any] | None) -> list[pa.Array]:
    """LightGBM's raw output turned into the schema's prediction columns."""
    if (card or {}).get("objective") != "multiclass":
        return [pa.array(raw, pa.float64())]
    assert card is not None
    classes = card["classes"]
    proba = np.asarray(raw).reshape(len(raw), len(classes))
    best = pa.array(classes, _class_type(classes)).take(pa.array(np.argmax(proba, axis=1)))
    return [*(pa.array(proba[:, k], pa.float64()) for k in range(len(classes))), best]


@dataclass
class Tally:
    """What score_batches saw, for the commit's metrics (and the drift histograms)."""

    rows: int = 0
    warnings: list[str] = field(default_factory=list)
    drift: drift.Tally | None = None


def score_batches(batches: Iterable[pa.RecordBatch], booster: Predictor, fmap: FeatureMap,
                  id_columns: list[str], schema: pa.Schema, model_version: str, run_id: str,
                  num_threads: int, shard: tuple[int, int] = (0, 1),
                  card: dict[str, Any] | None = None, tally: Tally | None = None
                  ) -> Iterator[pa.RecordBatch]:
    """Yield one predictions batch per input batch (the pure core of score)."""
    index, count = shard
    for batch in batches:
        if count > 1:
            keys = batch.column(id_columns[0]).to_numpy(zero_copy_only=False)
            batch = batch.filter(pa.array(keys % count == index))
        if batch.num_rows == 0:
            continue
        with arrow_data_errors("score"):
            matrix = fmap.matrix(batch)
        raw = np.asarray(booster.predict(matrix, num_threads=num_threads))
        n = batch.num_rows
        if tally is not None:
            tally.rows += n
            if tally.drift is not None:
                tally.drift.add(matrix, raw)
        yield pa.RecordBatch.from_arrays(
            [*(batch.column(c) for c in id_columns), *prediction_columns(raw, card),
             pa.array([model_version] * n, pa.string()), pa.array([run_id] * n, pa.string())],
            schema=schema)


def population_dataset(features_uri: str, params: ScoreParams) -> ds.Dataset:
    """The dataset the population is drawn from: the features table or a separate source."""
    if not isinstance(params.population, SourcePopulation):
        return storage.open_dataset(features_uri)
    fs, path = storage.resolve(params.population.source)
    try:
        return ds.dataset(path, filesystem=fs, format="parquet")
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise DataError(f"{_POPULATION}.source: cannot read {params.population.source} as "
                        f"Parquet ({exc}); point it at a Parquet file or folder") from None


def check_columns(dataset: ds.Dataset, params: ScoreParams, fmap: FeatureMap, label: str,
                  where: str) -> None:
    """Refuse a population that lacks the id, feature or (for `unlabelled`) label columns."""
    names = dataset.schema.names
    missing = [c for c in params.id_columns if c not in names]
    if missing:
        raise DataError(f"stages.score.params.id_columns: columns {missing} are not in {where}")
    if params.population == "unlabelled" and label not in names:
        raise DataError(f"{_POPULATION}: unlabelled needs the label column {label!r}, which is "
                        f"not in {where}; choose population: all or a where predicate")
    lacking = [c for c in fmap.features if c not in names]
    if lacking:
        raise DataError(f"{where} lacks model columns {lacking}; score a population with the "
                        "columns the model was trained on")


def population_batches(dataset: ds.Dataset, params: ScoreParams, label: str,
                       columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The population's rows (only `columns`), at most `batch_rows` at a time."""
    if isinstance(params.population, SqlPopulation):
        yield from _sql_population(dataset, params, params.population.where, columns)
        return
    row_filter = ds.field(label).is_null() if params.population == "unlabelled" else None
    scanner = dataset.scanner(columns=columns, filter=row_filter, batch_size=params.batch_rows,
                              use_threads=False, batch_readahead=1, fragment_readahead=1)
    yield from scanner.to_batches()


def _sql_population(dataset: ds.Dataset, params: ScoreParams, where: str,
                    columns: list[str]) -> Iterator[pa.RecordBatch]:
    # DuckDB comes with the `features` extra; the score image carries only
    # `model`, so it is imported here, when a predicate asks for it.
    try:
        import duckdb

        from batchline.stages.features import check_one_select, duckdb_errors
    except ImportError:
        raise SpecError(f"{_POPULATION}.where needs DuckDB: install batchline[features] in the "
                        "score image, or use population: unlabelled / all") from None
    select = ", ".join(f'"{c}"' for c in columns)
    query = f"SELECT {select} FROM population WHERE (\n{where}\n)"
    check_one_select(query, f"{_POPULATION}.where")
    con = duckdb.connect(config={"threads": cpu.threads(params.num_threads),
                                 "memory_limit": "256MB", "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    try:
        con.register("population", dataset.scanner(batch_size=params.batch_rows,
                                                   batch_readahead=1,
                                                   fragment_readahead=1).to_reader())
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        with duckdb_errors():
            reader = con.sql(query).to_arrow_reader(params.batch_rows)
            yield from reader
    finally:
        con.close()


def drift_tally(model_uri: str, fmap: FeatureMap, tally: Tally) -> drift.Tally | None:
    """The drift histograms to fill, from the model's profile; None (and a warning) for a
    model trained before profiles existed."""
    record = storage.committed(model_uri)
    found = [f for f in record.files if f.path.rsplit("/", 1)[-1] == drift.PROFILE]
    if not found:
        tally.warnings.append(f"score: {model_uri} has no {drift.PROFILE} (trained by an "
                              "older batchline): no drift check; train again to get one")
        return None
    data = storage.read_bytes(storage.join(model_uri, found[0].path))
    if hashlib.sha256(data).hexdigest() != found[0].sha256:
        raise DataError(f"{model_uri}/{drift.PROFILE} does not match its recorded sha256; "
                        "it was changed after training: retrain")
    return drift.Tally(json.loads(data), fmap)


# A model's figures at training that the monitor stage later compares outcomes with.
TRAINED_METRICS = ("auc_valid", "logloss_valid", "calibration_ece", "rmse_valid", "r2_valid",
                   "accuracy_valid", "multi_logloss_valid")


def trained_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """What the model measured on its validation rows at training, from its card."""
    metrics = card.get("metrics") or {}
    out = {k: metrics[k] for k in TRAINED_METRICS if isinstance(metrics.get(k), int | float)}
    ece = recorded_ece(metrics)
    if ece is not None:
        out["calibration_ece"] = ece
    return {**out, "trained_in_run": card.get("trained_in_run"),
            **({"segment": card["segment"]} if card.get("segment") else {})}


def commit_metrics(tally: Tally, params: ScoreParams, model_version: str,
                   shard: tuple[int, int], population_size: Any) -> dict[str, Any]:
    """The metrics committed with the predictions; an empty population warns or fails."""
    warnings = list(tally.warnings)
    if tally.rows == 0:
        count = shard[1]
        # A shard may be empty while others are not: only a whole empty
        # population is worth a warning or an error.
        empty = count == 1 or population_size() == 0
        if empty and not params.allow_empty:
            raise DataError(f"{_POPULATION}: no rows to score, and stages.score.params."
                            "allow_empty is false; check the population and the features")
        if empty:
            warnings.append(f"score: the population ({_describe(params)}) is empty; 0 "
                            "predictions were committed")
    metrics: dict[str, Any] = {"model_version": model_version, "rows_scored": tally.rows,
                               "population": _describe(params)}
    if tally.drift is not None and tally.rows:
        metrics["drift"] = tally.drift.result(params.drift.warn, params.drift.alert,
                                              params.drift.min_rows)
        metrics["drift_alerts"] = len(metrics["drift"]["drifted"])
        # A shard's own drift is of its rows only: the union's (merged) is the one to read.
        if shard[1] == 1:
            warnings += psi.warnings(metrics["drift"])
    return {**metrics, "warnings": warnings}


def _describe(params: ScoreParams) -> str:
    population = params.population
    if isinstance(population, SqlPopulation):
        return f"where {population.where}"
    if isinstance(population, SourcePopulation):
        return f"source {population.source}"
    return population


def run(task: StageTask) -> dict[str, Any]:
    """Score the population with the model; commit `predictions` (or this shard of it)."""
    params = ScoreParams(**task.params)
    if params.segments is not None:
        from batchline.stages import fleet_score  # a fleet: each row by its segment's model

        return fleet_score.run(task, params)
    booster, card = load_model(task.inputs["model"])
    fmap = FeatureMap(card["feature_map"]["features"], card["feature_map"]["categorical"])
    dataset = population_dataset(task.inputs["features"], params)
    check_columns(dataset, params, fmap, card["label"], task.inputs["features"])
    columns = list(dict.fromkeys([*params.id_columns, *fmap.features]))
    schema = prediction_schema([dataset.schema.field(c) for c in params.id_columns], card)
    version, shard, tally = card["model_version"], (task.shard_index, task.shard_count), Tally()
    if params.drift.enabled:
        tally.drift = drift_tally(task.inputs["model"], fmap, tally)

    def population_size() -> int:
        return sum(b.num_rows for b in population_batches(dataset, params, card["label"],
                                                          params.id_columns[:1]))
    with task.writer("predictions", schema) as out:
        for batch in score_batches(population_batches(dataset, params, card["label"], columns),
                                   booster, fmap, params.id_columns, schema, version,
                                   task.run_id, cpu.threads(params.num_threads), shard, card,
                                   tally):
            out.write(batch)
        metrics = commit_metrics(tally, params, version, shard, population_size)
        record = out.commit({**metrics, "trained": {version: trained_metrics(card)}})
    log.info("score: %d predictions with model %s", record.rows, version)
    for warning in record.metrics["warnings"]:
        log.warning("%s", warning)
    return {"rows": record.rows, "model_version": version,
            "warnings": record.metrics["warnings"]}
