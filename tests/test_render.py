"""`batchline render`: Jobs for kubectl, each carrying its task and waiting for inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import SPEC, run_cli

from batchline import storage
from batchline.spec import load_spec


def _render(*extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("render", str(SPEC), "--run-id", "r1", "--storage", "s3://bucket/root",
                   "--set", "stages.ingest.params.source=s3://bucket/landing/enc.csv", *extra)


def test_render_prints_valid_jobs_in_order() -> None:
    result = _render("--secret", "aws-creds")
    assert result.returncode == 0, result.stderr
    jobs = list(yaml.safe_load_all(result.stdout))
    assert [j["metadata"]["labels"]["batchline.dev/stage"] for j in jobs] == \
        list(load_spec(SPEC).pipeline.order)
    for job in jobs:
        for version in ("1.29.0", "1.37.0"):
            kubernetes_validate.validate(job, version, strict=True)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][1:3] == ["--task", "env:BATCHLINE_TASK"]
        assert container["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
        task = json.loads(next(e["value"] for e in container["env"]
                               if e["name"] == "BATCHLINE_TASK"))
        assert task["storage_root"] == "s3://bucket/root"
        assert "SECRET" not in json.dumps(job).upper().replace("SECRETREF", "")


def test_render_refuses_local_paths() -> None:
    result = run_cli("render", str(SPEC), "--storage", "/tmp/x")
    assert result.returncode == 2 and "use an s3:// URI" in result.stderr


def test_rendered_stage_waits_for_its_inputs(tmp_path: Path) -> None:
    from batchline.render import tasks_for_run
    from batchline.spec import load_spec

    spec = load_spec(SPEC, {"stages.ingest.params.source": str(tmp_path / "x.csv")})
    features = tasks_for_run(spec, "r1", str(tmp_path))[1]
    result = subprocess.run(
        [sys.executable, "-m", "batchline.stage", "features", "--task", "env:BATCHLINE_TASK",
         "--wait-inputs", "1"], capture_output=True, text=True, check=False,
        env={**os.environ, "BATCHLINE_TASK": features.to_json()})
    assert result.returncode == 2
    assert "was not committed within 1s" in result.stderr
    assert storage.read_success(features.outputs["features"]) is None


@pytest.mark.parametrize("root", ["s3://bucket/root"])
def test_render_run_ids_are_validated(root: str) -> None:
    result = run_cli("render", str(SPEC), "--run-id", "Bad_ID", "--storage", root)
    assert result.returncode == 2 and "invalid run id" in result.stderr


def test_kubernetes_run_refuses_local_storage(tmp_path: Path) -> None:
    result = run_cli("run", str(SPEC), "--backend", "kubernetes", "--storage", str(tmp_path),
                     "--set", "stages.ingest.params.source=s3://bucket/in.csv")
    assert result.returncode == 2 and "use an s3:// URI" in result.stderr
    assert not list(tmp_path.iterdir())
