from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from conftest import SPEC

from batchline.demo_data import generate
from batchline.metrics import auc, calibration, log_loss
from batchline.spec import load_spec


def test_generated_csv_matches_the_spec_and_is_reproducible(tmp_path: Path) -> None:
    summary = generate(5_000, tmp_path / "a", seed=1)
    generate(5_000, tmp_path / "b", seed=1)
    a, b = (tmp_path / "a" / "encounters.csv"), (tmp_path / "b" / "encounters.csv")
    assert a.read_bytes() == b.read_bytes()
    table = pacsv.read_csv(a)
    declared = load_spec(SPEC).stages["ingest"].params["columns"]
    assert table.column_names == list(declared)
    assert table.num_rows == summary.rows == 5_000
    labels = table.column("readmitted_30d")
    assert labels.null_count == summary.population > 0
    assert table.column("encounter_id").to_pylist() == list(range(1, 5_001))
    assert 0.6 < summary.best_auc < 0.9
    meta = json.loads((tmp_path / "a" / "_generator.json").read_text())
    assert meta["best_auc"] == summary.best_auc
    assert not list((tmp_path / "a").glob(".encounters*"))  # no temporary file left behind


def test_too_few_rows() -> None:
    with pytest.raises(ValueError, match="at least 100"):
        generate(10, "/nonexistent")


def test_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert log_loss(y, np.array([0.5] * 4)) == pytest.approx(np.log(2))
    cal = calibration(y, np.array([0.0, 0.0, 1.0, 1.0]), bins=2)
    assert cal["ece"] == 0.0
