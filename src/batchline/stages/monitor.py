"""monitor: how accurate earlier runs' predictions were, now that their outcomes are known.

The ingested data of this run holds outcomes that have matured since earlier
runs scored them (next month's encounters carry last month's readmissions).
monitor joins those outcomes to the predictions of the pipeline's earlier
scoring runs by id and records AUC, log loss and calibration per scoring run,
per month, per segment and per model, each against the model's own figure at
training (which score records beside its predictions). A figure worse than
at training by more than `tolerance`, on at least `min_labelled` outcomes of
both classes, marks the model, month or segment as degraded.

An id scored by several runs counts once per run in `by_run`, and with its
most recent prediction everywhere else: that is the one the business acted on.

Its cache key follows the outcomes (its input): monitor is evaluated again
whenever new outcomes are ingested, which is when it has something new to
say. Predictions scored since, without new outcomes, cannot be judged yet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline import cpu, fleet, storage
from batchline.errors import DataError
from batchline.manifest import list_runs
from batchline.params import MonitorParams
from batchline.stages.accuracy import Judge, training_value, weighted_training
from batchline.task import StageTask

log = logging.getLogger(__name__)

_PARAMS = "stages.monitor.params"
ACCURACY_SCHEMA = pa.schema([
    ("level", pa.string()), ("key", pa.string()), ("labelled", pa.int64()),
    ("positives", pa.int64()), ("auc", pa.float64()), ("logloss", pa.float64()),
    ("calibration_ece", pa.float64()), ("training", pa.float64()), ("judged", pa.bool_()),
    ("degraded", pa.bool_())])
MAX_WARNINGS = 10  # degraded groups named in the summary; all are in the metrics
# level -> the key naming its groups, and the word for one in a sentence
_LEVELS = (("by_model", "model", "model"), ("by_month", "month", "month"),
           ("by_segment", "segment", "segment"), ("by_run", "run_id", "scoring run"))


@dataclass(frozen=True)
class Scoring:
    """One earlier scoring run's committed predictions."""

    run_id: str
    uri: str
    created_at: float
    metrics: dict[str, Any]
    rows: int


def earlier_scorings(root: str, pipeline: str, this_run: str, max_runs: int) -> list[Scoring]:
    """The pipeline's most recent committed predictions, oldest first, each dataset once
    (a run that reused an earlier run's predictions points at the same dataset)."""
    runs, _ = list_runs(root)
    out: list[Scoring] = []
    seen: set[str] = set()
    for manifest in runs:
        stage = manifest.stages.get("score")
        if manifest.pipeline != pipeline or manifest.run_id == this_run or stage is None \
                or not stage.state.done:
            continue
        uri = stage.outputs.get("predictions", "")
        record = storage.read_success(uri) if uri and uri not in seen else None
        if record is None:
            continue
        seen.add(uri)
        out.append(Scoring(manifest.run_id, uri, manifest.created_at, record.metrics,
                           record.rows))
    return out[-max_runs:]


def read_outcomes(uri: str, params: MonitorParams) -> pa.Table:
    """The labelled rows of this run's ingested data: ids, label, month and segment columns."""
    dataset = storage.open_dataset(uri)
    wanted = {"id_columns": params.id_columns, "label": [params.label],
              "time_column": [params.time_column] if params.time_column else [],
              "segment_column": [params.segment_column] if params.segment_column else []}
    for field, columns in wanted.items():
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise DataError(f"{_PARAMS}.{field}: {uri} has no column {missing}; its columns: "
                            f"{', '.join(dataset.schema.names)}")
    if params.time_column and not pa.types.is_temporal(dataset.schema.field(
            params.time_column).type):
        raise DataError(f"{_PARAMS}.time_column: {params.time_column!r} of {uri} is "
                        f"{dataset.schema.field(params.time_column).type}, not a date")
    columns = list(dict.fromkeys(c for cs in wanted.values() for c in cs))
    table = dataset.to_table(columns=columns, filter=pc.field(params.label).is_valid())
    values = pc.unique(table[params.label].cast(pa.float64())).to_pylist()
    if not set(values) <= {0.0, 1.0}:
        raise DataError(f"{_PARAMS}.label: {params.label!r} of {uri} holds "
                        f"{sorted(values)[:5]}; monitor judges 0/1 outcomes")
    return table


def join(con: duckdb.DuckDBPyConnection, outcomes: pa.Table, scorings: list[Scoring],
         params: MonitorParams) -> tuple[pa.Table, list[Scoring], list[str]]:
    """Every (scoring run, id) with a matured outcome, flagged `latest` for the id's most
    recent prediction; the scorings joined; warnings about those that could not be."""
    con.register("outcomes", outcomes)
    ids = ", ".join(f'"{c}"' for c in params.id_columns)
    parts: list[str] = []
    used: list[Scoring] = []
    warnings: list[str] = []
    ((duplicated,),) = con.execute(f"SELECT count(*) FROM (SELECT {ids} FROM outcomes "
                                   f"GROUP BY {ids} HAVING count(*) > 1)").fetchall()
    if duplicated:
        # which of two outcomes of one id is true cannot be told: neither is used
        warnings.append(f"{duplicated:,} ids appear more than once among the outcomes "
                        f"(by {params.id_columns}); their outcomes were left out")
    for scoring in scorings:
        dataset = storage.open_dataset(scoring.uri)
        names = dataset.schema.names
        missing = [c for c in [*params.id_columns, "score", "model_version"] if c not in names]
        if missing:
            warnings.append(f"predictions of run {scoring.run_id} have no {missing} "
                            "(monitor judges binary models by id_columns); not joined")
            continue
        view = f"p{len(used)}"
        con.register(view, dataset)
        segment = '"segment"' if "segment" in names else "NULL"
        model_segment = '"model_segment"' if "model_segment" in names else "NULL"
        parts.append(f"SELECT {len(used)} AS run_order, {ids}, score, model_version, "
                     f"{segment}::VARCHAR AS p_segment, {model_segment}::VARCHAR AS model_key "
                     f"FROM {view}")
        used.append(scoring)
    if not parts:
        return pa.table({}), used, warnings
    month = (f"strftime(o.\"{params.time_column}\", '%Y-%m')" if params.time_column
             else "NULL")
    own_segment = f'o."{params.segment_column}"::VARCHAR' if params.segment_column else "NULL"
    sql = f"""
        WITH p AS ({" UNION ALL ".join(parts)}),
        o AS (SELECT * FROM outcomes QUALIFY count(*) OVER (PARTITION BY {ids}) = 1)
        SELECT p.run_order, p.model_version, p.model_key,
               coalesce(p.p_segment, {own_segment}) AS segment, {month} AS month,
               p.score, o."{params.label}"::DOUBLE AS label,
               row_number() OVER (PARTITION BY {", ".join(f'p."{c}"' for c in
                                                          params.id_columns)}
                                  ORDER BY p.run_order DESC) = 1 AS latest
        FROM p JOIN o USING ({ids})"""
    return con.sql(sql).to_arrow_table(), used, warnings


def _groups(keys: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """(key, row indexes) for every distinct key, nulls left out."""
    present = np.flatnonzero(np.array([k is not None for k in keys], dtype=bool))
    if not len(present):
        return
    values, inverse = np.unique(keys[present].astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
    for i, value in enumerate(values):
        yield value, present[order[bounds[i]:bounds[i + 1]]]


class Evaluation:
    """The joined rows as arrays, judged group by group."""

    def __init__(self, joined: pa.Table, scorings: list[Scoring], judge: Judge) -> None:
        self.judge = judge
        self.scorings = scorings
        col = {name: joined[name].to_numpy(zero_copy_only=False) for name in joined.column_names}
        self.run_order, self.version = col["run_order"], col["model_version"]
        self.model_key, self.segment, self.month = col["model_key"], col["segment"], col["month"]
        self.score, self.label = col["score"].astype(float), col["label"].astype(float)
        self.latest = col["latest"].astype(bool)
        # version -> the model's figures at training, from every joined scoring
        self.trained: dict[str, dict[str, Any]] = {}
        for scoring in scorings:
            self.trained.update(scoring.metrics.get("trained") or {})

    def training(self, rows: np.ndarray) -> float | None:
        """The training figure of the models that scored `rows`, weighted by rows."""
        versions, counts = np.unique(self.version[rows].astype(str), return_counts=True)
        return weighted_training([(training_value(self.trained.get(v), self.judge.metric),
                                   int(n)) for v, n in zip(versions, counts, strict=True)])

    def level(self, keys: np.ndarray, rows: np.ndarray, name: str) -> list[dict[str, Any]]:
        out = []
        for key, idx in _groups(keys[rows]):
            picked = rows[idx]
            out.append(self.judge.group(self.label[picked], self.score[picked],
                                        self.training(picked), **{name: key}))
        return out

    def by_run(self) -> list[dict[str, Any]]:
        out = []
        for i, scoring in enumerate(self.scorings):
            rows = np.flatnonzero(self.run_order == i)
            versions = sorted(set(self.version[rows].astype(str)))
            row = self.judge.group(self.label[rows], self.score[rows], self.training(rows),
                                   run_id=scoring.run_id)
            out.append({**row, "scored_at": scoring.created_at, "rows_scored": scoring.rows,
                        "model_version": versions[0] if len(versions) == 1 else
                        f"{len(versions)} models"})
        return out

    def by_model(self) -> list[dict[str, Any]]:
        latest = np.flatnonzero(self.latest)
        keys = np.array([f"{k}/{v}" if k is not None else str(v) for k, v in
                         zip(self.model_key[latest], self.version[latest], strict=True)],
                        dtype=object)
        out = []
        for key, idx in _groups(keys):
            picked = latest[idx]
            segment, _, version = key.rpartition("/")
            out.append({**self.judge.group(self.label[picked], self.score[picked],
                                           self.training(picked), model=key),
                        "model_segment": segment or None, "model_version": version})
        return out

    def result(self) -> dict[str, Any]:
        latest = np.flatnonzero(self.latest)
        found = {"by_run": self.by_run(), "by_model": self.by_model(),
                 "by_month": self.level(self.month, latest, "month"),
                 "by_segment": self.level(self.segment, latest, "segment")}
        # worst first where a person reads a list: degraded, then by how far below
        for name in ("by_model", "by_segment"):
            found[name].sort(key=lambda r: (not r["degraded"], _gap(r, self.judge.metric)))
        degraded = [self.judge.describe(r, f"{word} {r[key]}") for level, key, word in _LEVELS
                    for r in found[level] if r["degraded"]]
        return {**found, "degraded": degraded}


def _gap(row: dict[str, Any], metric: str) -> float:
    """How far below training a group is (larger: worse); unjudged groups last."""
    value, training = row.get(metric), row.get("training")
    if value is None or training is None:
        return float("inf")
    return -(training - value) if metric == "auc" else -(value - training)


def accuracy_table(result: dict[str, Any]) -> pa.Table:
    """Every group of every level as one row: what the `accuracy` dataset holds."""
    rows = [{"level": level.removeprefix("by_"), "key": str(r[key]),
             **{c: r[c] for c in ACCURACY_SCHEMA.names[2:]}}
            for level, key, _ in _LEVELS for r in result[level]]
    return pa.Table.from_pylist(rows, schema=ACCURACY_SCHEMA)


def run(task: StageTask) -> dict[str, Any]:
    """Join matured outcomes to earlier predictions; commit `accuracy` and the figures."""
    params = MonitorParams(**task.params)
    pipeline = fleet.pipeline_name(task.placement)
    outcomes = read_outcomes(task.inputs["outcomes"], params)
    scorings = earlier_scorings(task.storage_root, pipeline, task.run_id, params.max_runs)
    judge = Judge(params.metric, params.tolerance, params.min_labelled,
                  params.calibration_bins)
    con = duckdb.connect(config={"threads": cpu.threads(2),
                                 "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    joined, used, warnings = join(con, outcomes, scorings, params)
    result: dict[str, Any] = {"by_run": [], "by_model": [], "by_month": [], "by_segment": [],
                              "degraded": []}
    if not scorings:
        warnings.append(f"no earlier scoring run of pipeline {pipeline!r} under "
                        f"{task.storage_root}: nothing to judge yet")
    elif joined.num_rows == 0 and used:
        warnings.append(f"none of {outcomes.num_rows:,} matured outcomes match the "
                        f"predictions of {len(used)} earlier runs by {params.id_columns}; "
                        "check stages.monitor.params.id_columns")
    if joined.num_rows:
        result = Evaluation(joined, used, judge).result()
    shown = result["degraded"][:MAX_WARNINGS]
    warnings += [f"degraded {line}" for line in shown]
    if len(result["degraded"]) > len(shown):
        warnings.append(f"and {len(result['degraded']) - len(shown)} more degraded groups: "
                        "see the accuracy dataset, or batchline report")
    monitor = {"metric": params.metric, "tolerance": params.tolerance,
               "min_labelled": params.min_labelled, "outcomes": outcomes.num_rows,
               "matched": int(joined.num_rows), "scorings": [s.run_id for s in used],
               **result}
    degraded_models = sum(r["degraded"] for r in result["by_model"])
    with task.writer("accuracy", ACCURACY_SCHEMA) as out:
        out.write(accuracy_table(result))
        record = out.commit({"monitor": monitor, "outcomes_matched": int(joined.num_rows),
                             "degraded_alerts": degraded_models, "warnings": warnings})
    log.info("monitor: %d matured outcomes joined to %d scoring runs; %d degraded models",
             joined.num_rows, len(used), degraded_models)
    for warning in warnings:
        log.warning("%s", warning)
    return {"rows": record.rows, "outcomes_matched": int(joined.num_rows),
            "degraded_alerts": degraded_models, "warnings": warnings}
