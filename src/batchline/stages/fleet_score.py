"""score for a fleet: each row by its segment's model, the global model for the rest.

Rows carry their segment (the column features adds); a batch is split by
segment and each part predicted by that segment's model, or by the global
model when the segment has none (too small, failed, or first seen now).
Models are loaded when their segment first appears, each checked against its
sha256, so a worker scoring a few segments loads only theirs. Each prediction
row names the segment and the version of the model that scored it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline import cpu, fleet, storage
from batchline.errors import DataError, StorageError
from batchline.params import SEGMENT_COLUMN, ScoreParams
from batchline.stages import drift
from batchline.stages import score as single
from batchline.stages.matrix import FeatureMap, arrow_data_errors
from batchline.task import StageTask

log = logging.getLogger(__name__)


@dataclass
class Model:
    """One loaded model of the fleet."""

    key: str
    booster: single.Predictor  # LightGBM, or a search's linear winner
    card: dict[str, Any]
    fmap: FeatureMap
    drift: drift.Tally | None = None  # the rows it scored, against its profile

    @property
    def version(self) -> str:
        return str(self.card["model_version"])


class FleetModels:
    """The models of a committed fleet `model` dataset, loaded on first use."""

    def __init__(self, model_uri: str, drift: bool = True) -> None:
        self.uri = model_uri
        self.drift = drift
        record = storage.committed(model_uri)
        self.files = {f.path.rsplit("/", 1)[-1]: f for f in record.files}
        boards = [storage.read_bytes(storage.join(model_uri, f.path)) for f in record.files
                  if f.path.rsplit("/", 1)[-1] == fleet.LEADERBOARD]
        if not boards:
            raise StorageError(f"{model_uri} holds no {fleet.LEADERBOARD}: it is not a fleet's "
                               "model; train again with this spec's segments:")
        # segment value -> key of the model that serves it (the registry's champion when
        # the run was written, which the train stage put in the dataset)
        self.routes = {r["value"]: r["segment"] for r in fleet.leaderboard_rows(boards)
                       if r.get("serving_version") and r["segment"] != fleet.GLOBAL}
        self._loaded: dict[str, Model] = {}
        self.fallback = self.get(fleet.GLOBAL)

    def get(self, key: str) -> Model:
        """The model named `key`, loaded and checked once."""
        if key not in self._loaded:
            text, card = self._read(key)
            fmap = FeatureMap(card["feature_map"]["features"], card["feature_map"]["categorical"])
            profile = self._profile(key) if self.drift else None
            self._loaded[key] = Model(key, single.predictor(text, card, f"{self.uri}: {key}"),
                                     card, fmap, drift.Tally(profile, fmap) if profile else None)
        return self._loaded[key]

    def _profile(self, key: str) -> dict[str, Any] | None:
        name = fleet.model_file(key, drift.PROFILE)
        if name not in self.files:
            return None  # registered before profiles existed: no drift for its rows
        data = storage.read_bytes(storage.join(self.uri, self.files[name].path))
        if hashlib.sha256(data).hexdigest() != self.files[name].sha256:
            raise DataError(f"{self.uri}/{name} does not match its recorded sha256; it was "
                            "changed after training: retrain")
        profile: dict[str, Any] = json.loads(data)
        return profile

    def drift_by_model(self, warn: float, alert: float, min_rows: int) -> dict[str, Any]:
        """Per model that scored rows: its rows' PSI per feature and the drifted ones.
        Compact (no bin counts): 500 models' counts would swell `_SUCCESS.json`."""
        out = {}
        for key, model in sorted(self._loaded.items()):
            if model.drift is None or not model.drift.rows:
                continue
            result = model.drift.result(warn, alert, min_rows)
            out[key] = {"rows": model.drift.rows, "drifted": result["drifted"],
                        "psi": {n: r["psi"] for n, r in result["psi"].items()},
                        "noise": {n: r["noise"] for n, r in result["psi"].items()}}
        return out

    def used(self) -> list[Model]:
        """The models loaded so far (each scored rows, or is the fallback)."""
        return [self._loaded[k] for k in sorted(self._loaded)]

    @property
    def loaded(self) -> int:
        """How many models were used so far."""
        return len(self._loaded)

    def for_segment(self, value: str | None) -> Model:
        """The segment's own model, or the global one."""
        key = self.routes.get(value) if value is not None else None
        return self.get(key) if key is not None else self.fallback

    def _read(self, key: str) -> tuple[bytes, dict[str, Any]]:
        names = fleet.model_file(key, "txt"), fleet.model_file(key, "json")
        missing = [n for n in names if n not in self.files]
        if missing:
            raise StorageError(f"{self.uri} lists no {missing}; train the fleet again")
        text = storage.read_bytes(storage.join(self.uri, self.files[names[0]].path))
        card: dict[str, Any] = json.loads(storage.read_bytes(
            storage.join(self.uri, self.files[names[1]].path)))
        digest = hashlib.sha256(text).hexdigest()
        if digest != card["model_sha256"] or digest != self.files[names[0]].sha256:
            raise DataError(f"{self.uri}/{names[0]} does not match its recorded sha256; the "
                            "model file was changed after training: retrain")
        return text, card


def prediction_schema(id_fields: list[pa.Field], card: dict[str, Any]) -> pa.Schema:
    """The single model's prediction columns, plus the row's segment and its model's."""
    base = single.prediction_schema(id_fields, card)
    at = base.get_field_index("model_version")
    return base.insert(at, pa.field("segment", pa.string())).insert(
        at + 1, pa.field("model_segment", pa.string()))


def score_batches(batches: Iterable[pa.RecordBatch], models: FleetModels,
                  id_columns: list[str], schema: pa.Schema, run_id: str, num_threads: int,
                  shard: tuple[int, int], tally: single.Tally) -> Iterator[pa.RecordBatch]:
    """One predictions batch per segment present in each input batch."""
    index, count = shard
    for batch in batches:
        if count > 1:
            keys = batch.column(id_columns[0]).to_numpy(zero_copy_only=False)
            batch = batch.filter(pa.array(keys % count == index))
        segments = batch.column(SEGMENT_COLUMN)
        for value in pc.unique(segments).to_pylist():
            mask = pc.is_null(segments) if value is None else pc.equal(segments, value)
            part = batch.filter(pc.fill_null(mask, False))
            model = models.for_segment(value)
            with arrow_data_errors("score"):
                matrix = model.fmap.matrix(part)
            raw = np.asarray(model.booster.predict(matrix, num_threads=num_threads))
            n = part.num_rows
            tally.rows += n
            if model.drift is not None:
                model.drift.add(matrix, raw)
            yield pa.RecordBatch.from_arrays(
                [*(part.column(c) for c in id_columns),
                 *single.prediction_columns(raw, model.card), pa.array([value] * n, pa.string()),
                 pa.array([model.key] * n, pa.string()),
                 pa.array([model.version] * n, pa.string()), pa.array([run_id] * n, pa.string())],
                schema=schema)


def run(task: StageTask, params: ScoreParams) -> dict[str, Any]:
    """Score the population, each row by its segment's model; commit `predictions`."""
    models = FleetModels(task.inputs["model"], drift=params.drift.enabled)
    glob = models.fallback
    dataset = single.population_dataset(task.inputs["features"], params)
    single.check_columns(dataset, params, glob.fmap, glob.card["label"], task.inputs["features"])
    if SEGMENT_COLUMN not in dataset.schema.names:
        raise DataError(f"{task.inputs['features']} has no {SEGMENT_COLUMN!r} column, which "
                        "features adds when the spec has segments:; run features with this spec")
    columns = list(dict.fromkeys([*params.id_columns, SEGMENT_COLUMN, *glob.fmap.features]))
    schema = prediction_schema([dataset.schema.field(c) for c in params.id_columns], glob.card)
    shard, tally = (task.shard_index, task.shard_count), single.Tally()

    def population_size() -> int:
        return sum(b.num_rows for b in single.population_batches(
            dataset, params, glob.card["label"], params.id_columns[:1]))
    with task.writer("predictions", schema) as out:
        for batch in score_batches(single.population_batches(dataset, params, glob.card["label"],
                                                             columns),
                                   models, params.id_columns, schema, task.run_id,
                                   cpu.threads(params.num_threads), shard, tally):
            out.write(batch)
        metrics = single.commit_metrics(tally, params, glob.version, shard, population_size)
        if params.drift.enabled:
            found, lines = drift_metrics(models.drift_by_model(
                params.drift.warn, params.drift.alert, params.drift.min_rows), shard[1] > 1)
            metrics.update(found, warnings=[*metrics["warnings"], *lines])
        # every model that scored rows, by version: what the monitor stage compares with
        metrics["trained"] = {m.version: single.trained_metrics(m.card)
                              for m in models.used()}
        record = out.commit(metrics)
    log.info("score: %d predictions by %d models", record.rows, models.loaded)
    return {"rows": record.rows, "model_version": glob.version,
            "warnings": record.metrics["warnings"]}


def drift_metrics(by_model: dict[str, Any], sharded: bool
                  ) -> tuple[dict[str, Any], list[str]]:
    """The fleet's drift in score's metrics: per model, the count of models with a shifted
    feature, and summary lines for the ten worst (each shard's own rows when sharded)."""
    drifted = {k: r for k, r in by_model.items() if r["drifted"]}
    worst = sorted(drifted, key=lambda k: -max(drifted[k]["psi"][n]
                                                for n in drifted[k]["drifted"]))[:10]
    where = "this shard's rows of " if sharded else ""
    lines = [f"drift: {where}segment {k} ({drifted[k]['rows']:,} rows): " + ", ".join(
        f"{n} PSI {drifted[k]['psi'][n]:.3f}" for n in drifted[k]["drifted"][:3])
        for k in worst]
    return {"drift_segments": by_model, "drift_alerts": len(drifted)}, lines
