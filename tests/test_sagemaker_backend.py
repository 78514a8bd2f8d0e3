"""The SageMaker backend against a SageMaker that really runs the images.

`SageMakerHarness` (tests/sagemaker_harness.py) serves the SageMaker API on
loopback and runs every job's real stage image with podman under the /opt/ml
contract; S3 and CloudWatch Logs are moto's server. The launcher, the backend
and the unmodified SDK core are the real ones.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import ROOT, fingerprints, sagemaker_backend
from test_backend_contract import spec_with, upload_demo, upload_wide_parquet

from batchline import fleet, layout, storage
from batchline.backends import get_backend
from batchline.causes import Cause
from batchline.demo_data import generate
from batchline.errors import StageFailed
from batchline.launcher import Launcher
from batchline.manifest import RunManifest
from batchline.registry import Registry
from batchline.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.podman]
FLEET = ROOT / "jobs" / "readmission_fleet.yaml"


def attempts(manifest: RunManifest, stage: str) -> list[tuple[int, Any, int | None]]:
    return [(a.number, a.cause, a.exit_code) for a in manifest.stage(stage).attempts]


def test_demo_on_sagemaker_gives_the_local_fingerprints_through_every_fault(
        sagemaker_harness: Any, s3_bucket: str, demo_csv: Path) -> None:
    """The whole demo as SageMaker jobs, meeting on the way a lost create response,
    throttled describes and a capacity error (ingest), a spot interruption (train) and
    a host terminated mid-run (score, 2 shards on 2 instances): each is reported with
    its cause and retried (or not) by the rules, and the committed outputs are still
    byte for byte those of the local backend. (One run for all: CI time.)"""
    harness = sagemaker_harness
    spec = spec_with(upload_demo(demo_csv, s3_bucket), stages__score__shards=2)
    run_id = f"e2e-{uuid.uuid4().hex[:6]}"
    on_sagemaker = f"{s3_bucket}/sagemaker"
    harness.lose_response("CreateProcessingJob")
    harness.throttle("DescribeProcessingJob", 3)
    harness.capacity_error()
    harness.interrupt_spot("training")
    harness.terminate_host(f"{run_id}-score-a1", "algo-2")
    creates, describes = harness.calls["CreateProcessingJob"], \
        harness.calls["DescribeProcessingJob"]
    manifest = Launcher(spec, on_sagemaker, sagemaker_backend(spot=True), run_id).run()
    assert manifest.state == "succeeded"
    assert harness.pending_faults() == {}
    local = f"{s3_bucket}/local"
    Launcher(spec, local, get_backend("local"), run_id).run()
    assert fingerprints(on_sagemaker, run_id) == fingerprints(local, run_id)

    jobs = {j.name: j for j in harness.jobs.values() if j.name.startswith(run_id)}
    shapes = {name: (j.kind, j.instances["InstanceCount"], j.status, j.exit_codes)
              for name, j in jobs.items()}
    assert shapes == {
        f"{run_id}-ingest-a1": ("processing", 1, "Failed", []),  # never got an instance
        f"{run_id}-ingest-a2": ("processing", 1, "Completed", [0]),
        f"{run_id}-features-a1": ("processing", 1, "Completed", [0]),
        f"{run_id}-train-a1": ("training", 1, "Failed", [137]),  # reclaimed: SIGKILL
        f"{run_id}-train-a2": ("training", 1, "Completed", [0]),
        f"{run_id}-score-a1": ("processing", 2, "Failed", [0, 143]),
        f"{run_id}-score-a2": ("processing", 2, "Completed", [0, 0])}

    # Capacity: unschedulable, retried with a new job.
    assert attempts(manifest, "ingest") == [(1, Cause.UNSCHEDULABLE, None),
                                            (2, Cause.SUCCEEDED, 0)]
    assert "CapacityError" in manifest.stage("ingest").attempts[0].message
    # The lost response: the SDK sent the create again, the backend adopted the
    # job it had made (one job ingest-a1, above); throttling was retried by the
    # SDK's client, unseen by the launcher.
    # ingest-a1 twice, then ingest-a2, features-a1, score-a1, score-a2
    assert harness.calls["CreateProcessingJob"] - creates == 6
    assert harness.calls["DescribeProcessingJob"] - describes > 3
    assert attempts(manifest, "features") == [(1, Cause.SUCCEEDED, 0)]
    # Spot interruption: evicted, retried without using up a retry.
    assert attempts(manifest, "train") == [(1, Cause.EVICTED, None), (2, Cause.SUCCEEDED, 0)]
    assert jobs[f"{run_id}-train-a1"].secondary == "Interrupted"
    assert jobs[f"{run_id}-train-a1"].request["EnableManagedSpotTraining"] is True
    # A terminated host fails its job (exit 143, retryable); the next attempt's
    # host 1 finds its shard committed and does nothing: only shard 1 is recomputed.
    assert attempts(manifest, "score") == [(1, Cause.USER_ERROR, 143), (2, Cause.SUCCEEDED, 0)]
    assert "committed by an earlier attempt" in storage.read_text(
        layout.log_uri(on_sagemaker, run_id, "score", 2, 0))
    assert "committed by an earlier attempt" not in storage.read_text(
        layout.log_uri(on_sagemaker, run_id, "score", 2, 1))
    # The harness lists what it ran, as ListTrainingJobs does.
    listed = boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert {j["TrainingJobName"] for j in listed} >= {f"{run_id}-train-a1",
                                                      f"{run_id}-train-a2"}
    # Each host's CloudWatch stream is kept as its shard's log.
    for shard in (0, 1):
        text = storage.read_text(layout.log_uri(on_sagemaker, run_id, "score", 1, shard))
        assert f"shard {shard}/2" in text

    # SageMaker keeps the trained model next to its own records, as model.tar.gz.
    train = jobs[f"{run_id}-train-a2"]
    assert train.model_uri == f"{on_sagemaker}/runs/{run_id}/train/sagemaker/{train.name}" \
        "/output/model.tar.gz"
    bucket, _, key = train.model_uri.removeprefix("s3://").partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        kept = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()}
    model = manifest.stage("train").outputs["model"]
    committed = {uri.rsplit("/", 1)[-1]: storage.read_bytes(uri)
                 for uri in storage.file_uris(model)}
    assert kept == committed and kept


def test_out_of_memory_names_the_instance_type(sagemaker_harness: Any, s3_bucket: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    spec = spec_with(upload_wide_parquet(s3_bucket),
                     stages__ingest__params__format="parquet",
                     stages__ingest__params__columns={"encounter_id": "int64", "note": "string"},
                     stages__ingest__params__required=["encounter_id"],
                     # the shipped checks name columns this file does not have
                     stages__ingest__params__checks=None,
                     stages__ingest__retries=0)
    run_id = f"oom-{uuid.uuid4().hex[:6]}"
    root = f"{s3_bucket}/oom"
    backend = sagemaker_backend(instance_types={"ingest": "ml.t3.medium"})
    # On the way, a status no SDK knows yet: reported once, waited through.
    sagemaker_harness.unknown_status(f"{run_id}-ingest-a1", times=3)
    with pytest.raises(StageFailed) as failed:
        Launcher(spec, root, backend, run_id, ["ingest"]).run()
    assert failed.value.cause is Cause.OUT_OF_MEMORY
    message = str(failed.value)
    assert "ml.t3.medium" in message and "sagemaker.instance_types.ingest" in message
    manifest = RunManifest.load(root, run_id)
    assert attempts(manifest, "ingest") == [(1, Cause.OUT_OF_MEMORY, 137)]
    job = sagemaker_harness.jobs[f"{run_id}-ingest-a1"]
    assert "instance type with more memory" in job.failure_reason
    assert sagemaker_harness.pending_faults() == {}
    unknown = [r.getMessage() for r in caplog.records if "unknown status" in r.getMessage()]
    # (a Processing Job has no secondary status: the SDK drops the harness's one)
    assert len(unknown) == 1 and "unknown status Paused" in unknown[0]


def test_a_fleet_trains_on_two_instances_and_the_launcher_promotes(
        sagemaker_harness: Any, s3_bucket: str, tmp_path: Path) -> None:
    """A 20-hospital fleet: train's two shards are one training job on two instances
    (each host takes its shard from resourceconfig.json), and the launcher, not the
    images, moves the registry's aliases on S3."""
    generate(12_000, tmp_path / "data", seed=5, hospitals=20, fleet=True)
    source = f"{s3_bucket}/landing/fleet.csv"
    storage.write_bytes(source, (tmp_path / "data" / "encounters.csv").read_bytes())
    spec = load_spec(FLEET, {"stages.ingest.params.source": source, "segments.min_rows": 150,
                             "stages.train.params.num_boost_round": 40,
                             "promote.max_calibration_error": 0.5, "promote.min_rows": 0})
    run_id = f"fleet-{uuid.uuid4().hex[:6]}"
    root = f"{s3_bucket}/fleet"
    manifest = Launcher(spec, root, sagemaker_backend(), run_id).run()
    assert manifest.state == "succeeded"

    train = next(j for j in sagemaker_harness.jobs.values() if j.name == f"{run_id}-train-a1")
    assert (train.kind, train.instances["InstanceCount"], train.exit_codes) == \
        ("training", 2, [0, 0])
    model = manifest.stage("train").outputs["model"]
    shards = [storage.committed(f"{model}/shard-0000{i}").metrics for i in (0, 1)]
    assert all(s["segments_trained"] + int(s.get("trained_global", 0)) > 0 for s in shards)
    board = {row["segment"]: row for row in fleet.read_leaderboard(model)}
    own = [k for k, r in board.items() if r["status"] == fleet.OK]
    assert fleet.GLOBAL in own and len(own) > 5
    registry = Registry(root, "readmission-fleet")
    for key in own:
        champion = registry.alias(key)
        assert champion is not None and champion.run_id == run_id
        assert champion.version == board[key]["model_version"]
        assert registry.decision(key, run_id)["promoted"] is True  # type: ignore[index]
