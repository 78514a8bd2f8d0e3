"""The stage images and the container backend, run for real with podman."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from conftest import SPEC, fingerprints, run_cli

from batchline import layout, storage
from batchline.backends.container import ContainerBackend, memory_bytes
from batchline.manifest import RunManifest
from batchline.task import Cause, Resources, StageTask

pytestmark = [pytest.mark.slow, pytest.mark.podman]


def _python_in(image: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "run", "--rm", "--read-only", "--user", "10001:10001",
                           "--tmpfs", "/tmp", "--entrypoint", "python", image, "-c", code],
                          capture_output=True, text=True, check=False, timeout=120)


def _upload_demo(demo_csv: Path, bucket: str, endpoint: str) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    name = bucket.removeprefix("s3://")
    for f in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_csv.parent / f), name, f"landing/{f}")
    return f"{bucket}/landing/encounters.csv"


def test_images_are_lean_non_root_and_read_only(stage_images: dict[str, str]) -> None:
    probe = ("import os, importlib.util as u; "
             "w = True\ntry: open('/probe', 'w')\nexcept OSError: w = False\n"
             "print(os.getuid(), w, *[u.find_spec(m) is not None for m in "
             "('pyarrow', 'duckdb', 'lightgbm', 'kubernetes', 'boto3')])")
    expected = {  # pyarrow, duckdb, lightgbm, kubernetes, boto3
        "ingest": "True False False False False", "features": "True True False False False",
        "train": "True False True False False", "score": "True False True False False",
        "launcher": "True False False True False",
    }
    for name, image in stage_images.items():
        result = _python_in(image, probe)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["10001", "False", *expected[name].split()], name
        labels = json.loads(subprocess.run(
            ["podman", "image", "inspect", "--format", "{{json .Labels}}", image],
            capture_output=True, text=True, check=True).stdout)
        assert labels["org.opencontainers.image.version"] == "0.1.0"
        assert labels["org.opencontainers.image.revision"]


def test_pipeline_in_containers_matches_local(stage_images: dict[str, str], demo_csv: Path,
                                              s3_bucket: str, moto_server: str) -> None:
    source = _upload_demo(demo_csv, s3_bucket, moto_server)
    args = ["--set", f"stages.ingest.params.source={source}", "--run-id", "same"]
    local = run_cli("run", str(SPEC), "--storage", f"{s3_bucket}/local", *args)
    assert local.returncode == 0, local.stderr
    contained = run_cli("run", str(SPEC), "--storage", f"{s3_bucket}/container",
                        "--backend", "container", *args)
    assert contained.returncode == 0, contained.stderr
    assert "4 stages launched" in contained.stdout
    ours, theirs = (fingerprints(f"{s3_bucket}/{r}", "same") for r in ("container", "local"))
    assert ours == theirs
    model = RunManifest.load(f"{s3_bucket}/container", "same").stage("train")["metrics"]
    assert model["model_version"] == RunManifest.load(
        f"{s3_bucket}/local", "same").stage("train")["metrics"]["model_version"]
    logs = run_cli("logs", "same", "score", "--storage", f"{s3_bucket}/container")
    assert "stage score: committed" in logs.stdout
    assert "testing" not in logs.stdout  # the credential value never reaches a log


def _task(root: str, stage: str, image: str, memory: str = "1Gi", **params: object) -> StageTask:
    task = StageTask(run_id="c1", stage=stage, inputs={}, params=dict(params),
                     outputs={o: layout.output_uri(root, "c1", stage, o)
                              for o in layout.OUTPUTS[stage]},
                     storage_root=root, task_uri=layout.task_uri(root, "c1", stage, 1),
                     cache_key="k", image=image, resources=Resources("1", memory, 600))
    storage.write_text(task.task_uri, task.to_json())
    return task


def test_out_of_memory_is_reported_with_advice(stage_images: dict[str, str], s3_bucket: str,
                                               demo_csv: Path, moto_server: str) -> None:
    source = _upload_demo(demo_csv, s3_bucket, moto_server)
    columns = {"encounter_id": "int64", "patient_id": "int64"}
    task = _task(f"{s3_bucket}/oom", "ingest", stage_images["ingest"], memory="40Mi",
                 source=source, columns=columns)
    backend = ContainerBackend()
    result = backend.wait(backend.submit(task))
    assert result.cause is Cause.OUT_OF_MEMORY
    assert "memory limit of 40Mi" in result.message
    assert "raise resources.ingest.memory" in result.advice()
    assert storage.read_success(task.outputs["encounters"]) is None


def test_missing_image_and_bad_input(stage_images: dict[str, str], s3_bucket: str,
                                     moto_server: str) -> None:
    backend = ContainerBackend()
    missing = _task(f"{s3_bucket}/x", "ingest", "localhost/batchline-nope:0.0.0",
                    source="s3://nowhere/x.csv", columns={"a": "int64"})
    result = backend.wait(backend.submit(missing))
    assert result.cause is Cause.IMAGE_PULL and "make images" in result.message
    bad = _task(f"{s3_bucket}/y", "ingest", stage_images["ingest"],
                source=f"{s3_bucket}/absent.csv", columns={"a": "int64"})
    result = backend.wait(backend.submit(bad))
    assert result.cause is Cause.BAD_INPUT and result.exit_code == 2
    assert "does not exist" in result.message


def test_credentials_pass_by_name_only(s3_bucket: str, moto_server: str) -> None:
    task = _task(f"{s3_bucket}/z", "score", "img", memory="3Gi")
    command = ContainerBackend().command(task, "name")
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert "AWS_SECRET_ACCESS_KEY" in command and all(secret not in a for a in command)
    assert command[command.index("--memory") + 1] == str(memory_bytes("3Gi")) == "3221225472"
    assert "--read-only" in command and "10001:10001" in command
