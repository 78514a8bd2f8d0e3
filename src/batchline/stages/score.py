"""score: predictions for every unlabelled row, streamed in record batches.

Memory stays bounded by `batch_rows` whatever the population size: the
features dataset is scanned with a filter on the empty label, one batch at a
time, and each batch's predictions are written before the next is read. With
`shards` > 1 each shard takes the rows whose first id column modulo the shard
count equals its index, and commits its own part; the launcher publishes the
union.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import lightgbm as lgb
import pyarrow as pa
import pyarrow.dataset as ds

from batchline import storage
from batchline.errors import DataError, StorageError
from batchline.params import ScoreParams
from batchline.stages.matrix import FeatureMap
from batchline.task import StageTask

log = logging.getLogger(__name__)


def load_model(model_uri: str) -> tuple[lgb.Booster, dict[str, Any]]:
    """Load model.txt and model.json from a committed model dataset, checking sha256."""
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
    return lgb.Booster(model_str=text.decode()), card


def prediction_schema(id_fields: list[pa.Field]) -> pa.Schema:
    return pa.schema([*id_fields, pa.field("score", pa.float64()),
                      pa.field("model_version", pa.string()), pa.field("run_id", pa.string())])


def score_batches(batches: Any, booster: lgb.Booster, fmap: FeatureMap, id_columns: list[str],
                  schema: pa.Schema, model_version: str, run_id: str, num_threads: int,
                  shard: tuple[int, int] = (0, 1)) -> Any:
    """Yield one predictions batch per input batch (the pure core of score)."""
    index, count = shard
    for batch in batches:
        if count > 1:
            keys = batch.column(id_columns[0]).to_numpy(zero_copy_only=False)
            batch = batch.filter(pa.array(keys % count == index))
        if batch.num_rows == 0:
            continue
        scores = booster.predict(fmap.matrix(batch), num_threads=num_threads)
        n = batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [*(batch.column(c) for c in id_columns), pa.array(scores, pa.float64()),
             pa.array([model_version] * n, pa.string()), pa.array([run_id] * n, pa.string())],
            schema=schema)


def run(task: StageTask) -> dict[str, Any]:
    """Score the population with the model; commit `predictions` (or this shard of it)."""
    params = ScoreParams(**task.params)
    booster, card = load_model(task.inputs["model"])
    fmap = FeatureMap(card["feature_map"]["features"], card["feature_map"]["categorical"])
    dataset: ds.Dataset = storage.open_dataset(task.inputs["features"])
    label = card["label"]
    missing = [c for c in [*params.id_columns, label] if c not in dataset.schema.names]
    if missing:
        raise DataError(f"stages.score.params.id_columns: columns {missing} are not in "
                        f"{task.inputs['features']}")
    columns = list(dict.fromkeys([*params.id_columns, *fmap.features]))
    scanner = dataset.scanner(columns=columns, filter=ds.field(label).is_null(),
                              batch_size=params.batch_rows, use_threads=False,
                              batch_readahead=1, fragment_readahead=1)
    schema = prediction_schema([dataset.schema.field(c) for c in params.id_columns])
    version = card["model_version"]
    with task.writer("predictions", schema) as out:
        for batch in score_batches(scanner.to_batches(), booster, fmap, params.id_columns,
                                   schema, version, task.run_id, params.num_threads,
                                   (task.shard_index, task.shard_count)):
            out.write(batch)
        record = out.commit({"model_version": version})
    log.info("score: %d predictions with model %s", record.rows, version)
    return {"rows": record.rows, "model_version": version}
