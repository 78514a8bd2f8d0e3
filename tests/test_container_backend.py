"""The container backend, run for real with podman against moto S3 over HTTP."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RUNAWAY_FEATURES, committed_encounters

from batchline import layout, storage
from batchline.backends.container import ContainerBackend, cpus, run_as
from batchline.quantity import memory_bytes
from batchline.stages import STAGES
from batchline.task import Cause, Resources, StageTask

pytestmark = [pytest.mark.slow, pytest.mark.podman]


def _upload_demo(demo_csv: Path, bucket: str, endpoint: str) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    name = bucket.removeprefix("s3://")
    for f in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_csv.parent / f), name, f"landing/{f}")
    return f"{bucket}/landing/encounters.csv"


def _task(root: str, stage: str, image: str, memory: str = "1Gi", run_id: str = "c1",
          timeout: int = 600, inputs: dict[str, str] | None = None,
          **params: object) -> StageTask:
    task = StageTask(run_id=run_id, stage=stage, inputs=inputs or {}, params=dict(params),
                     outputs={o: layout.output_uri(root, run_id, stage, o)
                              for o in STAGES[stage].outputs},
                     storage_root=root, task_uri=layout.task_uri(root, run_id, stage, 1),
                     cache_key="k", image=image, resources=Resources("1", memory, timeout))
    storage.write_text(task.task_uri, task.to_json())
    return task


def _containers(run_id: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}", "--filter",
                          f"label=batchline.dev/run-id={run_id}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _upload_wide_parquet(bucket: str, endpoint: str, rows: int = 400) -> str:
    """A tiny file that decodes to `rows` MB: one row group of identical 1 MB notes.

    Dictionary encoding keeps it small on disk; reading it needs the full
    decoded size at once, so the stage's demand is far above any small limit
    right away (no slow thrashing near the limit) and it is OOM-killed.
    """
    note = "x" * 2**20
    table = pa.table({"encounter_id": pa.array(range(rows), pa.int64()),
                      "note": pa.array([note] * rows)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=rows, compression="zstd")
    name = bucket.removeprefix("s3://")
    boto3.client("s3", endpoint_url=endpoint).put_object(
        Bucket=name, Key="landing/wide.parquet", Body=sink.getvalue().to_pybytes())
    return f"{bucket}/landing/wide.parquet"


def test_out_of_memory_is_reported_with_advice(stage_images: dict[str, str], s3_bucket: str,
                                               moto_server: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    source = _upload_wide_parquet(s3_bucket, moto_server)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # conmon drops an `oom` file into its caller's folder
    task = _task(f"{s3_bucket}/oom", "ingest", stage_images["ingest"], memory="192Mi",
                 run_id="oom1", timeout=300, source=source, format="parquet",
                 columns={"encounter_id": "int64", "note": "string"})
    backend = ContainerBackend()
    result = backend.wait(backend.submit(task))
    assert result.cause is Cause.OUT_OF_MEMORY, result
    assert "memory limit of 192Mi" in result.message
    assert "raise stages.ingest.resources.memory" in result.message
    assert "raise stages.ingest.resources.memory" in result.advice()
    assert storage.read_success(task.outputs["encounters"]) is None
    assert _containers("oom1") == []  # inspected, then removed
    assert list(workdir.iterdir()) == []  # the user's folder stays clean


def test_runaway_stage_is_stopped_at_its_deadline(stage_images: dict[str, str], s3_bucket: str,
                                                  demo_csv: Path, moto_server: str) -> None:
    """A feature query that would run for hours is stopped at timeout_seconds."""
    root = f"{s3_bucket}/deadline"
    encounters = committed_encounters(root, demo_csv)
    task = _task(root, "features", stage_images["features"], run_id="late1", timeout=4,
                 inputs={"encounters": encounters}, **RUNAWAY_FEATURES)
    backend = ContainerBackend(grace_seconds=2)
    result = backend.wait(backend.submit(task))
    assert result.cause is Cause.DEADLINE, result
    assert "timeout of 4 s" in result.message
    assert "raise stages.features.resources.timeout_seconds" in result.advice()
    assert storage.read_success(task.outputs["features"]) is None
    assert _containers("late1") == []


def test_missing_image_is_an_image_pull_failure(s3_bucket: str, moto_server: str) -> None:
    backend = ContainerBackend()
    missing = _task(f"{s3_bucket}/x", "ingest", "localhost/batchline-nope:0.0.0",
                    source="s3://nowhere/x.csv", columns={"a": "int64"})
    result = backend.wait(backend.submit(missing))
    assert result.cause is Cause.IMAGE_PULL
    assert "make images" in result.message and "batchline-nope" in result.message


def test_bad_input_events_logs_and_secrets(stage_images: dict[str, str], s3_bucket: str,
                                           moto_server: str, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # moto accepts any key: a distinctive one shows whether its value leaks anywhere.
    secret = "never-log-me-7f3a9c"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-" + secret)
    bad = _task(f"{s3_bucket}/y", "ingest", stage_images["ingest"],
                source=f"{s3_bucket}/absent.csv", columns={"a": "int64"})
    backend = ContainerBackend()
    events: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="batchline.backends.container"):
        handle = backend.submit(bad)
        result = backend.wait(handle, on_event=lambda task, state: events.append(state))
    assert events == ["pending", "running"]
    assert result.cause is Cause.BAD_INPUT and result.exit_code == 2
    assert "does not exist" in result.message
    assert "does not exist" in backend.logs(handle)
    saved = storage.read_text(layout.log_uri(bad.storage_root, "c1", "ingest", 1, None))
    assert "does not exist" in saved
    assert "--env AWS_SECRET_ACCESS_KEY --env AWS_SESSION_TOKEN" in caplog.text
    for text in (caplog.text, saved, result.log_tail, result.message):
        assert secret not in text


def test_cancel_stops_and_removes(stage_images: dict[str, str], s3_bucket: str,
                                  demo_csv: Path, moto_server: str) -> None:
    source = _upload_demo(demo_csv, s3_bucket, moto_server)
    task = _task(f"{s3_bucket}/cancel", "ingest", stage_images["ingest"], run_id="stop1",
                 source=source, columns={"encounter_id": "int64", "patient_id": "int64"})
    backend = ContainerBackend()
    handle = backend.submit(task)
    backend.cancel(handle)
    backend.cancel(handle)  # safe twice
    result = backend.wait(handle)
    assert result.cause is Cause.CANCELLED
    assert result.exit_code == 143  # SIGTERM reached the stage: stopped, not timed out
    assert _containers("stop1") == []
    assert storage.read_success(task.outputs["encounters"]) is None


def test_command_limits_and_credentials_by_name(s3_bucket: str, moto_server: str) -> None:
    task = _task(f"{s3_bucket}/z", "score", "img", memory="3Gi")
    command = ContainerBackend().command(task, "name")
    secret = "testing"
    assert "AWS_SECRET_ACCESS_KEY" in command and all(secret not in a for a in command)
    assert command[command.index("--memory") + 1] == str(memory_bytes("3Gi")) == "3221225472"
    assert command[command.index("--cpus") + 1] == "1"
    assert "--read-only" in command and "10001:10001" in command
    assert command[-4:] == ["img", "score", "--task", task.task_uri]
    assert memory_bytes("512Mi") == 512 * 2**20 and memory_bytes("2G") == 2 * 10**9
    assert cpus("500m") == "0.5"


def test_stages_never_run_as_root() -> None:
    image_user = "10001:10001"
    assert run_as("podman", image_user, "s3://b/root", 1000, 1000) == ["--user", image_user]
    assert run_as("podman", image_user, "/data", 0, 0) == ["--user", image_user]
    # A non-root caller with a local folder: the stage runs as that caller.
    assert run_as("/usr/bin/podman", image_user, "/home/ann/data", 1000, 100) == [
        "--user", "1000:100", "--userns", "keep-id"]
    assert run_as("docker", image_user, "file:///home/ann/data", 1000, 100) == [
        "--user", "1000:100"]
