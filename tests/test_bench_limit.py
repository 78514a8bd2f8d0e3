"""bench/limit.py, the one-process limit the benchmark compares batchline with, on 20k rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from batchline.demo_data import generate

ROOT = Path(__file__).resolve().parent.parent


def test_limit_script_runs_the_demo_and_reports_its_phases(tmp_path: Path) -> None:
    generate(20_000, tmp_path / "data", seed=3)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "limit.py"),
                           str(tmp_path / "data" / "encounters.csv"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == 20_000
    assert set(result["phases"]) == {"ingest", "features", "train", "score"}
    assert 0.6 < result["auc_valid"] < 0.8
    assert (tmp_path / "out" / "predictions.parquet").stat().st_size > 0
