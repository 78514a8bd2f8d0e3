"""The Python client's worked example (docs/python-client.md) runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from batchline.demo_data import generate

DOC = ROOT / "docs" / "python-client.md"


def test_the_worked_example_runs_as_written(tmp_path: Path) -> None:
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    (tmp_path / "jobs").symlink_to(ROOT / "jobs")
    generate(3_000, tmp_path / "demo-data", seed=7)
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, check=False,
                            env={**os.environ, "BATCHLINE_LOG_LEVEL": "WARNING"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"run readmission-\S+: AUC 0\.\d{4}, model [0-9a-f]{12} at \S+model\.txt",
                     out), out
    assert "risk" in out or "count" in out  # predictions.describe() printed a table
    assert "'ingest': 'reused', 'features': 'reused', 'train': 'succeeded', " \
           "'score': 'succeeded'" in out, out
    assert "train: succeeded (param num_leaves changed" in out, out
    assert "train failed (bad_input): run readmission-" in out, out
