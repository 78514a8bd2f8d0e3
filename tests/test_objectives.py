"""The regression and multiclass examples end to end, score's populations, data errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT
from test_launcher import InProcessBackend

from batchline import stage as entrypoint
from batchline import storage
from batchline.errors import DataError, SpecError
from batchline.launcher import Launcher
from batchline.spec import load_spec
from batchline.stages import score
from batchline.task import StageTask


def _run_job(job: str, demo_csv: Path, root: Path) -> dict[str, Any]:
    spec = load_spec(ROOT / "jobs" / job, {"stages.ingest.params.source": str(demo_csv)})
    Launcher(spec, str(root), InProcessBackend(), "j1").run()
    return storage.committed(str(root / "runs" / "j1" / "train" / "model")).metrics


def _predictions(root: Path) -> pa.Table:
    return storage.open_dataset(str(root / "runs" / "j1" / "score" / "predictions")).to_table()


def test_length_of_stay_regression_example(demo_csv: Path, tmp_path: Path) -> None:
    metrics = _run_job("length_of_stay.yaml", demo_csv, tmp_path)
    assert metrics["objective"] == "regression"
    # The generator draws length of stay mostly at random: the model must not
    # be worse than predicting the training mean, and the metrics must be sane.
    assert metrics["rmse_valid"] <= metrics["rmse_baseline_valid"] * 1.01
    assert 0 < metrics["mae_valid"] < metrics["rmse_valid"]
    assert -0.05 < metrics["r2_valid"] < 1
    assert metrics["split"]["kind"] == "time" and metrics["split"]["column"] == "admit_date"
    assert abs(metrics["split"]["fractions"]["valid"] - 0.2) < 0.02
    assert metrics["rows_early_stopping"] > 0 and metrics["warnings"] == []
    table = _predictions(tmp_path)
    assert table.column_names == ["encounter_id", "patient_id", "prediction", "model_version",
                                  "run_id"]
    assert table.num_rows > 0 and 1 < pa.compute.mean(table["prediction"]).as_py() < 15
    _populations(tmp_path)


def test_utilisation_band_multiclass_example(demo_csv: Path, tmp_path: Path) -> None:
    metrics = _run_job("utilisation_band.yaml", demo_csv, tmp_path)
    assert metrics["objective"] == "multiclass"
    assert metrics["classes"] == ["none", "one", "two_or_more"]
    assert metrics["multi_logloss_valid"] < metrics["multi_logloss_baseline_valid"]
    assert 0.3 < metrics["accuracy_valid"] <= 1
    split = metrics["split"]
    assert split["kind"] == "group" and 0 < split["groups_held_out"] < split["groups"]
    table = _predictions(tmp_path)
    assert table.column_names == ["encounter_id", "patient_id", "p_none", "p_one",
                                  "p_two_or_more", "predicted_class", "model_version", "run_id"]
    rows = table.slice(0, 50).to_pylist()
    for row in rows:
        probs = {c: row[f"p_{c}"] for c in metrics["classes"]}
        assert abs(sum(probs.values()) - 1) < 1e-6
        assert row["predicted_class"] == max(probs, key=probs.__getitem__)


def _score_task(root: Path, name: str, **params: Any) -> StageTask:
    run = root / "runs" / "j1"
    return StageTask(run_id="p1", stage="score", params={"id_columns": ["encounter_id"],
                                                         **params},
                     inputs={"features": str(run / "features" / "features"),
                             "model": str(run / "train" / "model")},
                     outputs={"predictions": str(root / "pop" / name)},
                     storage_root=str(root), task_uri="", cache_key="k")


def _populations(root: Path) -> None:
    """Score's populations, on the regression run (called from its test to reuse the model)."""
    features = storage.open_dataset(str(root / "runs" / "j1" / "features" / "features"))
    total = features.count_rows()
    assert score.run(_score_task(root, "all", population="all"))["rows"] == total

    where = score.run(_score_task(root, "where", population={"where": "age >= 80"}))
    assert where["rows"] == features.count_rows(filter=pa.compute.field("age") >= 80) > 0

    empty = score.run(_score_task(root, "empty", population={"where": "age > 1000"}))
    assert empty["rows"] == 0 and "is empty" in empty["warnings"][0]
    record = storage.committed(str(root / "pop" / "empty"))
    assert record.rows == 0 and "is empty" in record.metrics["warnings"][0]
    with pytest.raises(DataError, match="allow_empty is false"):
        score.run(_score_task(root, "strict", population={"where": "age > 1000"},
                              allow_empty=False))
    assert storage.read_success(str(root / "pop" / "strict")) is None

    with pytest.raises(SpecError, match="population.where: must be exactly one SELECT"):
        score.run(_score_task(root, "inject",
                              population={"where": "true); SET threads=64; SELECT (1"}))

    source = root / "elsewhere.parquet"
    pq.write_table(features.head(123), source)
    assert score.run(_score_task(root, "source", population={"source": str(source)}))[
        "rows"] == 123


def test_string_label_in_train_is_exit_2_naming_the_column(tmp_path: Path) -> None:
    n = 300
    table = pa.table({"id": range(n), "t": range(n), "x": [i % 7 for i in range(n)],
                      "outcome": ["yes" if i % 3 else "no" for i in range(n)]})
    with storage.DatasetWriter(str(tmp_path / "features"),
                               storage.Stamp(run_id="t", stage="features", cache_key="k")) as out:
        out.write(table)
        out.commit()
    task = StageTask(run_id="s1", stage="train", inputs={"features": str(tmp_path / "features")},
                     outputs={"model": str(tmp_path / "model")},
                     params={"label": "outcome", "time_column": "t", "exclude": ["id"]},
                     storage_root=str(tmp_path), task_uri=str(tmp_path / "task.json"),
                     cache_key="k")
    (tmp_path / "task.json").write_text(task.to_json())
    assert entrypoint.main(["train", "--task", str(tmp_path / "task.json")]) == 2
    with pytest.raises(DataError, match="'outcome' has type string, but objective binary"):
        entrypoint.run_task(task)
    multiclass = dataclasses.replace(task, params={**task.params, "objective": "multiclass"})
    entrypoint.run_task(multiclass)
    assert storage.committed(str(tmp_path / "model")).metrics["classes"] == ["no", "yes"]
