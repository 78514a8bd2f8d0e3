"""train for a fleet: a global model plus one model per segment, this worker's share.

Every worker counts the labelled rows per segment (one column, read once),
computes the same plan and packing (`batchline.fleet`), and trains the models
of its own bin one after another, each through the very function that trains
a single model (`train.train`), on only that segment's rows: the features
table is sorted by segment and written in small row groups, so the filtered
read skips every row group of other segments by its statistics.

A segment whose model cannot be built (one label class, too few rows on one
side of the split, data LightGBM refuses) is listed in the leaderboard with
its cause and does not stop the others; the launcher judges the whole fleet
against `segments.max_failed_fraction`. The global model is the fallback of
every other segment, so its failure fails the worker. When an earlier attempt
of this worker committed with the same cache key, its successful models are
carried over and only its failed segments are trained again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batchline import fleet, storage
from batchline.errors import DataError
from batchline.params import SEGMENT_COLUMN, SegmentsSpec, TrainParams
from batchline.registry import Registry
from batchline.stages import drift, fleet_gate
from batchline.stages import train as single
from batchline.stages.matrix import arrow_data_errors
from batchline.task import StageTask

log = logging.getLogger(__name__)
Trainer = Callable[[single.TrainingData, TrainParams], single.TrainedModel]
# Figures of a model's metrics that the leaderboard shows, when the objective has them.
BOARD_METRICS = ("auc_valid", "logloss_valid", "calibration_ece", "rmse_valid", "mae_valid",
                 "r2_valid", "multi_logloss_valid", "accuracy_valid", "best_iteration",
                 "rows_fit", "rows_early_stopping", "rows_valid")


def segment_counts(dataset: ds.Dataset, label: str) -> dict[str | None, int]:
    """Labelled rows per segment value (None: rows without a segment)."""
    if SEGMENT_COLUMN not in dataset.schema.names:
        raise DataError(f"the features table has no {SEGMENT_COLUMN!r} column, which features "
                        "adds when the spec has segments:; run features again with this spec "
                        "(batchline run ... --force features)")
    if label not in dataset.schema.names:
        raise DataError(f"stages.train.params.label: {label!r} is not a column of the "
                        f"features table ({dataset.schema.names})")
    column = dataset.to_table(columns=[SEGMENT_COLUMN],
                              filter=ds.field(label).is_valid()).column(SEGMENT_COLUMN)
    counts = pc.value_counts(column).to_pylist()
    return {c["values"]: int(c["counts"]) for c in counts}


def segment_rows(dataset: ds.Dataset, value: str | None) -> ds.Dataset:
    """The rows of one segment, as a dataset whose scans skip other segments' row groups."""
    column = ds.field(SEGMENT_COLUMN)
    return dataset.filter(column.is_null() if value is None else column == value)


def check_both_classes(data: single.TrainingData, params: TrainParams) -> None:
    """A binary model of one segment needs both classes to fit and to be judged."""
    if params.objective != "binary":
        return
    for name, y in (("labelled", data.y), ("validation", data.valid[1])):
        present = np.unique(y)
        if len(present) < 2:
            raise DataError(f"label {params.label!r} holds only {present.tolist()} in the "
                            f"segment's {name} rows; a binary model needs both classes")


def board_entry(key: str, value: str | None, model: single.TrainedModel) -> dict[str, Any]:
    """One leaderboard row for a trained model (no timings: equal inputs give equal bytes,
    so a resume that retrains nothing new leaves score's input unchanged)."""
    metrics = single.commit_metrics(model)
    return {"segment": key, "value": value, "status": fleet.OK,
            "model_version": metrics["model_version"], "model_sha256": model.sha256,
            "rows": metrics["rows"], **{k: metrics[k] for k in BOARD_METRICS if k in metrics},
            "warnings": model.metrics.get("warnings", []),
            **_search_figures(model)}


def _search_figures(model: single.TrainedModel) -> dict[str, Any]:
    """What the fleet leaderboard shows of a segment's search (spec `search:`)."""
    found = model.metrics.get("search")
    if found is None:
        return {}
    winner = found["winner"]
    # no timings here: equal inputs must give equal leaderboard bytes
    return {"model_kind": model.kind, "search_candidates": found["candidates"],
            "search_stopped_by": found["stopped_by"], "search_gain_valid": found["gain_valid"],
            "search_winner": {k: winner[k] for k in ("trial", "kind", "params") if k in winner}}


class Carried:
    """The models an earlier attempt of this worker committed with the same cache key."""

    def __init__(self, task: StageTask) -> None:
        self.uri = task.output_uri("model")
        record = storage.read_success(self.uri)
        self.files: dict[str, str] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        if record is None or record.meta.get("cache_key") != task.cache_key:
            return
        self.files = {f.path.rsplit("/", 1)[-1]: f.path for f in record.files}
        if fleet.LEADERBOARD in self.files:
            board = storage.read_bytes(storage.join(self.uri, self.files[fleet.LEADERBOARD]))
            self.entries = {r["segment"]: r for r in json.loads(board)
                            if r["status"] == fleet.OK}

    def take(self, key: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """The entry and serving files of a model trained before, or None to train it."""
        entry = self.entries.get(key)
        names = [fleet.model_file(key, "txt"), fleet.model_file(key, "json")]
        serves = entry is not None and entry.get("serving_version") is not None
        if entry is None or (serves and any(n not in self.files for n in names)):
            return None
        profile = fleet.model_file(key, drift.PROFILE)
        names += [profile] if profile in self.files else []
        return entry, {n: storage.read_bytes(storage.join(self.uri, self.files[n]))
                       for n in names if serves}


def train_segment(dataset: ds.Dataset, value: str | None, params: TrainParams,
                  trainer: Trainer) -> tuple[single.TrainedModel, single.TrainingData]:
    """One segment's model (or the global one, `dataset` unfiltered), and its data."""
    with arrow_data_errors("train"):
        data = single.load_training_data(dataset, params)
    check_both_classes(data, params)
    try:
        return trainer(data, params), data
    except lgb.basic.LightGBMError as exc:
        raise DataError(f"LightGBM refused the segment's data: {exc}") from None


def run(task: StageTask, params: TrainParams, trainer: Trainer = single.train
        ) -> dict[str, Any]:
    """Train this worker's share of the fleet; commit its models and leaderboard."""
    segments = params.segments
    assert segments is not None
    dataset = storage.open_dataset(task.inputs["features"])
    with arrow_data_errors("train"):
        the_plan = fleet.plan(segment_counts(dataset, params.label), segments.min_rows)
    mine = fleet.pack(the_plan.work(), task.shard_count)[task.shard_index]
    # The segment column is the routing key, not a feature; each model is a
    # single model of its own, so the spec's segments do not reach it.
    base = params.model_copy(update={"exclude": [*params.exclude, SEGMENT_COLUMN],
                                     "segments": None})
    # (base keeps `promote`: the gate reads it; a model's own card never shows it)
    carried = Carried(task)
    board: list[dict[str, Any]] = []
    with task.writer("model") as out:
        for key in mine:
            value = the_plan.values.get(key)
            entry = _one(out, dataset, key, value, base, trainer, carried, task)
            board.append(entry)
        if fleet.GLOBAL in mine:  # the worker of the global model lists who falls back to it
            board += [{"segment": k, "value": the_plan.values[k], "status": fleet.FALLBACK,
                       "rows": n, "cause": f"{n} labelled rows, fewer than segments.min_rows "
                       f"{segments.min_rows}: scored by the global model"}
                      for k, n in the_plan.fallback.items()]
        out.write_file(fleet.LEADERBOARD, json.dumps(board, indent=1, sort_keys=True).encode())
        part = worker_metrics(board, segments)
        # Alone, this worker's commit is the fleet's; sharded, the launcher merges.
        metrics = fleet.merge_metrics([part]) if task.shard_count == 1 else part
        out.commit(metrics)
    # The launcher moves the aliases the gate decided on, once the whole fleet is judged
    # (batchline.promotion), and republishes the serving snapshot.
    return summary(metrics)


def _one(out: storage.DatasetWriter, dataset: ds.Dataset, key: str, value: str | None,
         base: TrainParams, trainer: Trainer, carried: Carried, task: StageTask
         ) -> dict[str, Any]:
    """Train (or carry over) one model, put it through the promotion gate, and write the
    files of the version that serves the segment in this run; its leaderboard entry."""
    kept = carried.take(key)
    if kept is not None:
        entry, files = kept
        for name, content in files.items():
            out.write_file(name, content)
        entry = dict(entry)
        log.info("train: segment %s: carried over from an earlier attempt", key)
        return entry
    registry = Registry(task.storage_root, fleet.pipeline_name(task.placement))
    started = time.monotonic()
    rows = dataset if key == fleet.GLOBAL else segment_rows(dataset, value)
    try:
        model, data = train_segment(rows, value, base, trainer)
    except DataError as exc:
        if key == fleet.GLOBAL:
            raise DataError(f"the global model (every segment's fallback) failed: {exc}") \
                from None
        log.warning("train: segment %s failed: %s", key, exc)
        champion = registry.alias(key)
        if champion is not None:  # the champion keeps scoring the segment
            serve(out, registry, key, champion.version)
        return {"segment": key, "value": value, "status": fleet.FAILED, "cause": str(exc),
                "serving_version": champion.version if champion else None}
    card = {**single.model_card(model, base, task.run_id), "segment": key,
            "segment_value": value}
    entry = board_entry(key, value, model)
    # score's drift reference for the rows this model serves
    profile = drift.dumps(single.profile(model, card, data, base.num_threads))
    version = registry.register(key, model.text.encode(), files={drift.PROFILE: profile},
                                record={
        "card": card, "metrics": {k: v for k, v in entry.items() if k in BOARD_METRICS},
        "lineage": lineage(task, base),
        # every candidate of the segment's search, when the spec has `search:`
        "leaderboard": model.leaderboard})
    decision = fleet_gate.decide(registry, key, version, single.commit_metrics(model),
                                 fleet_gate.Holdout.of(data), base)
    entry.update(decision=decision, serving_version=decision["serving"])
    if decision["serving"] == version:
        out.write_file(fleet.model_file(key, "txt"), model.text.encode())
        out.write_file(fleet.model_file(key, "json"),
                       json.dumps(card, indent=2, sort_keys=True).encode())
        out.write_file(fleet.model_file(key, drift.PROFILE), profile)
    elif decision["serving"] is not None:
        serve(out, registry, key, decision["serving"])
    log.info("train: segment %s: trained in %.1fs (%s); %s: %s", key,
             time.monotonic() - started,
             ", ".join(f"{k} {entry[k]}" for k in BOARD_METRICS[:5] if k in entry),
             "passes the gate" if decision["promote"] else "refused", decision["reason"])
    return entry


def serve(out: storage.DatasetWriter, registry: Registry, key: str, version: str) -> None:
    """Write a registered version's files as the segment's serving model."""
    record = registry.version(key, version)
    out.write_file(fleet.model_file(key, "txt"), registry.model_text(key, version))
    out.write_file(fleet.model_file(key, "json"),
                   json.dumps(record["card"], indent=2, sort_keys=True).encode())
    profile = registry.file(key, version, drift.PROFILE)
    if profile is not None:  # versions registered before profiles existed have none
        out.write_file(fleet.model_file(key, drift.PROFILE), profile)


def lineage(task: StageTask, params: TrainParams) -> dict[str, Any]:
    """Where a registered model came from: run, inputs, code and spec."""
    spec = json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
    return {"run_id": task.run_id, "inputs": dict(task.lineage),
            "code_version": task.code_version, "cache_key": task.cache_key,
            "spec_hash": hashlib.sha256(spec).hexdigest()[:16]}


def worker_metrics(board: list[dict[str, Any]], segments: SegmentsSpec) -> dict[str, Any]:
    """This worker's commit metrics: the global model's figures (if it trained it) and the
    counts of segments trained, failed and falling back."""
    metrics: dict[str, Any] = {}
    glob = next((r for r in board if r["segment"] == fleet.GLOBAL), None)
    if glob is not None:
        metrics.update({k: glob[k] for k in (*BOARD_METRICS, "model_version", "model_sha256",
                                             "rows") if k in glob})
        metrics.update(trained_global=True, serving_version=glob.get("serving_version"))
    failed = [r["segment"] for r in board if r["status"] == fleet.FAILED]
    metrics.update({
        "segments_trained": sum(r["status"] == fleet.OK and r["segment"] != fleet.GLOBAL
                                for r in board),
        "segments_failed": len(failed), "failed_parts": failed,
        "segments_fallback": sum(r["status"] == fleet.FALLBACK for r in board),
        "segments_promoted": sum(bool(r.get("decision", {}).get("promote"))
                                 and r["segment"] != fleet.GLOBAL for r in board),
        "max_failed_fraction": segments.max_failed_fraction})
    return metrics


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What run() returns: the worker's counts and, from the global model, its headline."""
    keys = ("auc_valid", "rmse_valid", "multi_logloss_valid", "model_version",
            "segments_trained", "segments_promoted", "segments_failed", "segments_fallback",
            "warnings")
    out = {k: metrics[k] for k in keys if k in metrics}
    log.info("train: %d segment models, %d failed, %d fall back to the global model",
             out["segments_trained"], out["segments_failed"], out["segments_fallback"])
    return out
