"""bench/limit.py, the one-process limit the benchmark compares batchline with, on 20k rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batchline.demo_data import generate

ROOT = Path(__file__).resolve().parent.parent


def _limit(tmp_path: Path, out: str, *options: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "limit.py"),
                           str(tmp_path / "data" / "encounters.csv"), str(tmp_path / out),
                           *options], capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_limit_script_runs_the_demo_and_reports_its_phases(tmp_path: Path) -> None:
    generate(20_000, tmp_path / "data", seed=3)
    result = _limit(tmp_path, "out")
    assert result["rows"] == 20_000
    assert set(result["phases"]) == {"ingest", "features", "train", "score"}
    assert 0.6 < result["auc_valid"] < 0.8
    predictions = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert predictions.num_rows > 0 and not (tmp_path / "out" / "features.parquet").exists()

    # With the stage boundaries' Parquet hand-offs: the same model and the same scores,
    # from the files each phase wrote for the next.
    staged = _limit(tmp_path, "staged", "--handoffs")
    assert staged["auc_valid"] == result["auc_valid"]
    assert staged["best_iteration"] == result["best_iteration"]
    assert pq.read_table(tmp_path / "staged" / "encounters.parquet").num_rows == 20_000
    assert pq.read_table(tmp_path / "staged" / "features.parquet").num_rows == 20_000
    assert pq.read_table(tmp_path / "staged" / "predictions.parquet").equals(predictions)
