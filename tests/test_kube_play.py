"""The pod manifest the Kubernetes backend builds, run for real by `podman kube play`.

There is no cluster here, but podman runs a v1 Pod from YAML with its
securityContext honoured, so this shows the hardened pod (uid 10001,
read-only root filesystem, /tmp on an emptyDir) can actually do a stage's
work: ingest reads the CSV from S3 (moto) and commits its dataset. A second
test plays the pods of two Jobs from `batchline render` at once, as
`kubectl apply` would start them: the features pod carries its task inline
and waits until ingest has committed.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import SPEC

from batchline import layout, storage
from batchline.backends.kubernetes_job import CONTAINER, UID, job_name, pod_manifest
from batchline.render import render_run
from batchline.spec import load_spec
from batchline.stages import STAGES
from batchline.task import Resources, StageTask

pytestmark = [pytest.mark.slow, pytest.mark.podman]


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False,
                          timeout=timeout)


def _ingest_task(root: str, source: str, image: str) -> StageTask:
    """The ingest stage as the launcher would resolve it, params from the real spec."""
    # as the launcher dumps them: JSON-ready (the checks' dates as ISO text)
    params = {**load_spec(SPEC).params("ingest").model_dump(mode="json"), "source": source}
    # A fresh run id per test: the pod (and its container) is named after it.
    run_id = f"kp-{uuid.uuid4().hex[:8]}"
    task = StageTask(run_id=run_id, stage="ingest", inputs={}, params=params,
                     outputs={o: layout.output_uri(root, run_id, "ingest", o)
                              for o in STAGES["ingest"].outputs},
                     storage_root=root, task_uri=layout.task_uri(root, run_id, "ingest", 1),
                     cache_key="kube-play", image=image, resources=Resources("1", "1Gi", 600))
    storage.write_text(task.task_uri, task.to_json())
    return task


def _inspect(container: str) -> dict[str, Any]:
    result = _podman("inspect", container)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def test_stage_pod_runs_under_podman_kube_play(stage_images: dict[str, str], s3_bucket: str,
                                               demo_csv: Path, moto_server: str,
                                               tmp_path: Path) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=moto_server)
    for name in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_csv.parent / name), bucket, f"landing/{name}")
    task = _ingest_task(f"{s3_bucket}/kube", f"{s3_bucket}/landing/encounters.csv",
                        stage_images["ingest"])

    # Test-only credentials for moto; in a cluster they come from IRSA or a
    # Secret named by envFrom, never a literal value.
    env = {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    manifest = pod_manifest(task, namespace="default", env=env)
    pod = job_name(task)
    assert manifest["metadata"]["name"] == pod
    play_file = tmp_path / "pod.yaml"
    play_file.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")

    # Host network: the container reaches moto on the host's loopback, as
    # the container backend's tests do.
    played = _podman("kube", "play", "--network", "host", str(play_file), timeout=300)
    try:
        assert played.returncode == 0, played.stderr
        container = f"{pod}-{CONTAINER}"
        listed = _podman("ps", "-a", "--filter", f"pod={pod}", "--format", "{{.Names}}")
        assert container in listed.stdout.split(), listed.stdout
        waited = _podman("wait", container, timeout=600)
        assert waited.returncode == 0, waited.stderr
        logs = _podman("logs", container).stdout + _podman("logs", container).stderr
        assert waited.stdout.strip() == "0", f"exit {waited.stdout.strip()}:\n{logs[-3000:]}"

        info = _inspect(container)
        # The pod's securityContext reached the runtime: non-root uid, a
        # read-only root filesystem (the stage still worked, writing only /tmp).
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert info["Config"]["User"] == f"{UID}:{UID}"
        assert "no-new-privileges" in host["SecurityOpt"]  # allowPrivilegeEscalation: false
        assert not host.get("CapAdd") and "CAP_CHOWN" in host["CapDrop"]  # drop: [ALL]
        assert host["Memory"] == 2**30  # resources.limits.memory: 1Gi
        assert info["State"]["ExitCode"] == 0
        assert "testing" not in logs  # the credential value never reaches the log
    finally:
        down = _podman("kube", "down", str(play_file))
    assert down.returncode == 0, down.stderr
    assert _podman("pod", "exists", pod).returncode != 0  # kube down removed it

    with demo_csv.open(encoding="utf-8") as f:
        csv_rows = sum(1 for line in f if line.strip()) - 1  # minus the header
    encounters = storage.committed(task.outputs["encounters"])
    assert encounters.rows == csv_rows == 20_000
    assert storage.committed(task.outputs["quarantine"]).rows == 0
    assert encounters.metrics["rows_in"] == csv_rows


def _timestamp(text: str) -> datetime:
    """podman's RFC 3339 times carry nanoseconds; datetime takes microseconds."""
    head, fraction, tail = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)", text).groups()
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]:0<6}{tail}")


def _pod_of(job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """A rendered Job's pod template as a bare Pod, plus test-only credentials."""
    spec = job["spec"]["template"]["spec"]
    spec["containers"][0]["env"] += [{"name": k, "value": v} for k, v in env.items()]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": job["metadata"]["name"],
                         "labels": job["spec"]["template"]["metadata"]["labels"]},
            "spec": spec}


def test_rendered_jobs_run_together_and_features_waits(
        stage_images: dict[str, str], s3_bucket: str, demo_csv: Path, moto_server: str,
        tmp_path: Path) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=moto_server)
    for name in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_csv.parent / name), bucket, f"landing/{name}")
    root = f"{s3_bucket}/rendered"
    spec = load_spec(SPEC, {"stages.ingest.params.source": f"{s3_bucket}/landing/encounters.csv"})
    run_id = f"kr-{uuid.uuid4().hex[:8]}"
    jobs = {j["metadata"]["labels"]["batchline.dev/stage"]: j
            for j in render_run(spec, run_id, root)}
    env = {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    # Both pods in one file, features first: it must wait for ingest's commit.
    play_file = tmp_path / "run.yaml"
    play_file.write_text(yaml.safe_dump_all(
        [_pod_of(jobs[s], env) for s in ("features", "ingest")], sort_keys=False),
        encoding="utf-8")
    played = _podman("kube", "play", "--network", "host", str(play_file), timeout=300)
    state: dict[str, dict[str, Any]] = {}
    try:
        assert played.returncode == 0, played.stderr
        for stage in ("ingest", "features"):
            container = f"{jobs[stage]['metadata']['name']}-{CONTAINER}"
            waited = _podman("wait", container, timeout=900)
            logs = _podman("logs", container)
            assert waited.stdout.strip() == "0", f"{stage}:\n{logs.stderr[-3000:]}"
            info = _inspect(container)
            assert info["HostConfig"]["ReadonlyRootfs"] is True
            state[stage] = info["State"]
    finally:
        down = _podman("kube", "down", str(play_file))
    assert down.returncode == 0, down.stderr

    ingested = storage.committed(layout.output_uri(root, run_id, "ingest", "encounters"))
    features = storage.committed(layout.output_uri(root, run_id, "features", "features"))
    assert ingested.rows == features.rows == 20_000
    # The two ran together, and features finished after ingest had committed.
    times = {(stage, key): _timestamp(state[stage][key])
             for stage in state for key in ("StartedAt", "FinishedAt")}
    assert times["features", "StartedAt"] < times["ingest", "FinishedAt"], state
    assert times["features", "FinishedAt"] > times["ingest", "FinishedAt"], state
