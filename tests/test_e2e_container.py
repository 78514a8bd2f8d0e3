"""The must-show run: the demo pipeline in podman containers equals the local run.

Same demo data, same spec, same run id, one moto S3 server over HTTP: every
committed output of the container run (each _SUCCESS.json's checksums, the
model's sha256) must match the local backend's, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from conftest import SPEC, fingerprints, run_cli

from batchline import storage
from batchline.manifest import RunManifest

pytestmark = [pytest.mark.slow, pytest.mark.podman]


def _upload(demo_dir: Path, bucket: str, endpoint: str) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for name in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_dir / name), bucket.removeprefix("s3://"), f"landing/{name}")
    return f"{bucket}/landing/encounters.csv"


def _model_sha256(root: str) -> str:
    model_uri = RunManifest.load(root, "same").stage("train").outputs["model"]
    files = {f.path.rsplit("/", 1)[-1]: f.sha256 for f in storage.committed(model_uri).files}
    return files["model.txt"]


def test_demo_pipeline_in_containers_matches_local(stage_images: dict[str, str],
                                                   tmp_path: Path, s3_bucket: str,
                                                   moto_server: str) -> None:
    made = run_cli("demo-data", "--rows", "20000", "--out", str(tmp_path / "demo"))
    assert made.returncode == 0, made.stderr
    source = _upload(tmp_path / "demo", s3_bucket, moto_server)
    args = ["--set", f"stages.ingest.params.source={source}", "--run-id", "same"]
    local = run_cli("run", str(SPEC), "--storage", f"{s3_bucket}/local", *args)
    assert local.returncode == 0, local.stdout + local.stderr
    contained = run_cli("run", str(SPEC), "--backend", "container",
                        "--storage", f"{s3_bucket}/container", *args)
    assert contained.returncode == 0, contained.stdout + contained.stderr
    assert ": 4 succeeded;" in contained.stdout

    ours = fingerprints(f"{s3_bucket}/container", "same")
    theirs = fingerprints(f"{s3_bucket}/local", "same")
    assert set(ours) == {"ingest.encounters", "ingest.quarantine", "features.features",
                         "train.model", "score.predictions"}
    assert ours == theirs
    assert _model_sha256(f"{s3_bucket}/container") == _model_sha256(f"{s3_bucket}/local")

    logs = run_cli("logs", "same", "score", "--storage", f"{s3_bucket}/container")
    assert "stage score: committed" in logs.stdout
    assert "testing" not in logs.stdout  # the credential value never reaches a log


def test_local_folder_storage_in_containers(stage_images: dict[str, str],
                                            tmp_path: Path) -> None:
    """The embedded default (a local folder) works with --backend container too:
    the stage user (10001) is given this run's output folders and nothing else."""
    made = run_cli("demo-data", "--rows", "5000", "--out", str(tmp_path / "demo"))
    assert made.returncode == 0, made.stderr
    args = ["--set", f"stages.ingest.params.source={tmp_path / 'demo' / 'encounters.csv'}",
            "--run-id", "same"]
    local = run_cli("run", str(SPEC), "--storage", str(tmp_path / "local"), *args)
    assert local.returncode == 0, local.stdout + local.stderr
    root = tmp_path / "container"
    contained = run_cli("run", str(SPEC), "--backend", "container", "--storage", str(root),
                        *args)
    assert contained.returncode == 0, contained.stdout + contained.stderr
    assert fingerprints(str(root), "same") == fingerprints(str(tmp_path / "local"), "same")

    stage_owned = {p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.stat().st_uid == 10001 and p.parent.stat().st_uid != 10001}
    assert stage_owned == {"runs/same/ingest/encounters", "runs/same/ingest/quarantine",
                           "runs/same/features/features", "runs/same/train/model",
                           "runs/same/score/predictions"}
