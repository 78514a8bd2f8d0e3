"""One contract, every backend: the same tests on local, container, Kubernetes and SageMaker.

Each test builds real StageTasks from jobs/readmission.yaml (as the launcher
does), keeps every byte on moto's S3 server over HTTP, and runs them through a
backend built the way users get it: `get_backend(name, options)`, or for
Kubernetes the backend against kmock's API on loopback, where `PodmanKubelet`
runs each Job's pod from the real stage image with `podman kube play`, or for
SageMaker the backend against `SageMakerHarness`, which runs each job's real
image with podman under the /opt/ml contract.
A behaviour a platform cannot show is left out of that test's parametrization,
with the reason next to it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    RUNAWAY_FEATURES,
    SPEC,
    committed_encounters,
    eventually,
    sagemaker_backend,
)
from kube_cluster import Cluster, PodmanKubelet

from batchline import layout, storage
from batchline.backends import get_backend
from batchline.backends.base import Backend, Handle
from batchline.causes import Cause
from batchline.errors import StageFailed
from batchline.launcher import Launcher, stage_task
from batchline.manifest import RunManifest
from batchline.spec import PipelineSpec, load_spec
from batchline.stage import run_task
from batchline.stages import STAGES
from batchline.task import Resources, StageTask

pytestmark = [pytest.mark.slow, pytest.mark.podman]

BACKENDS = ["local", "container", "kubernetes", "sagemaker"]
NAMESPACE = "batchline"
SECRET = "batchline-aws"
# Short grace between SIGTERM and SIGKILL: the runaway query sits in DuckDB's
# C code and never sees SIGTERM, so every stop of it ends in SIGKILL.
OPTIONS: dict[str, dict[str, Any]] = {
    "local": {"grace_seconds": 1},
    "container": {"grace_seconds": 1, "poll_seconds": 0.2},
}
STARTING = "stage {stage}: starting"


# -- the platforms ---------------------------------------------------------------

@dataclass
class Kube:
    cluster: Cluster
    kubelet: PodmanKubelet


@pytest.fixture(scope="module")
def kube(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """One kmock API server and one podman kubelet for the whole module."""
    cluster = Cluster(namespace=NAMESPACE)
    # Stage pods get the S3 keys from a Secret (envFrom), as in a cluster.
    cluster.create_secret(SECRET, {k: os.environ[k] for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    kubelet = PodmanKubelet(cluster, tmp_path_factory.mktemp("kubelet"),
                            grace_seconds=1).start()
    yield Kube(cluster, kubelet)
    kubelet.stop()
    cluster.close()


@dataclass
class Platform:
    """A backend under test, and how to look at its platform from outside."""

    name: str
    backend: Backend[Any]
    kube: Kube | None = None
    harness: Any = None  # the SageMaker stand-in

    def run_id(self, what: str) -> str:
        return f"{what}-{self.name[:4]}-{uuid.uuid4().hex[:6]}"

    def running(self, handle: Handle) -> bool:
        """Whether anything of the task still runs on the platform."""
        if self.name == "local":
            return handle.proc.poll() is None  # type: ignore[attr-defined]
        if self.name == "container":
            return bool(containers(handle.task.run_id))
        if self.harness is not None:
            job = self.harness.jobs[handle.ref]
            return any(subprocess.run(["podman", "container", "exists", ctr],
                                      check=False).returncode == 0 for ctr in job.containers)
        assert self.kube is not None
        pods = self.kube.kubelet.pods.get(handle.job, [])  # type: ignore[attr-defined]
        return any(subprocess.run(["podman", "pod", "exists", pod], check=False).returncode == 0
                   for pod in pods)

    def pods(self, handle: Handle) -> list[str]:
        """The pod objects of the task's Job in the API server (Kubernetes only)."""
        assert self.kube is not None
        items = self.kube.cluster.core.list_namespaced_pod(
            NAMESPACE, _preload_content=False).json()["items"]
        return [p["metadata"]["name"] for p in items
                if (p["metadata"].get("labels") or {}).get("job-name")
                == handle.job]  # type: ignore[attr-defined]


@pytest.fixture(params=BACKENDS)
def platform(request: pytest.FixtureRequest, moto_server: str,
             stage_images: dict[str, str]) -> Iterator[Platform]:
    name = request.param
    if name == "sagemaker":
        yield Platform(name, sagemaker_backend(), harness=request.getfixturevalue(
            "sagemaker_harness"))
        return
    if name != "kubernetes":
        yield Platform(name, get_backend(name, OPTIONS[name]))
        return
    kube: Kube = request.getfixturevalue("kube")
    yield Platform(name, kubernetes_backend(kube), kube)
    assert kube.kubelet.errors == []


def kubernetes_backend(kube: Kube, **options: Any) -> Backend[Any]:
    """The kubernetes backend against the module's API server; S3 keys from the Secret."""
    from batchline.backends.kubernetes import KubernetesBackend

    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")}
    return KubernetesBackend(namespace=NAMESPACE, api_client=kube.cluster.api_client,
                             poll_seconds=0.2, watch_seconds=5, unschedulable_grace_seconds=0,
                             env=env, secret=SECRET, **options)


# -- data and tasks ----------------------------------------------------------------

def containers(run_id: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}", "--filter",
                          f"label=batchline.dev/run-id={run_id}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def upload_demo(demo_csv: Path, bucket: str) -> str:
    s3 = boto3.client("s3")
    for name in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_csv.parent / name), bucket.removeprefix("s3://"),
                       f"landing/{name}")
    return f"{bucket}/landing/encounters.csv"


def upload_wide_parquet(bucket: str, rows: int = 400) -> str:
    """A tiny file that decodes to `rows` MB (one row group of identical 1 MB notes), so
    reading it needs far more than a small memory limit at once (no slow thrashing)."""
    table = pa.table({"encounter_id": pa.array(range(rows), pa.int64()),
                      "note": pa.array(["x" * 2**20] * rows)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=rows, compression="zstd")
    boto3.client("s3").put_object(Bucket=bucket.removeprefix("s3://"),
                                  Key="landing/wide.parquet",
                                  Body=sink.getvalue().to_pybytes())
    return f"{bucket}/landing/wide.parquet"


def spec_with(source: str, **overrides: Any) -> PipelineSpec:
    """The shipped spec reading `source`, with `a.b.c` overrides as `a__b__c=...`."""
    sets = {k.replace("__", "."): v for k, v in overrides.items()}
    return load_spec(SPEC, {"stages.ingest.params.source": source, **sets})


def task_of(spec: PipelineSpec, root: str, run_id: str, stage: str,
            inputs: dict[str, str] | None = None, timeout: int | None = None) -> StageTask:
    """Attempt 1 of `stage` as the launcher builds it, stored at its task URI."""
    outputs = {o: layout.output_uri(root, run_id, stage, o) for o in STAGES[stage].outputs}
    task = stage_task(spec, root, run_id, stage, inputs or {}, outputs, "contract")
    if timeout is not None:  # below the spec's minimum of 10 s, to keep tests short
        res = task.resources
        task = dataclasses.replace(task, resources=Resources(res.cpu, res.memory, timeout))
    storage.write_text(task.task_uri, task.to_json())
    return task


def nothing_committed(task: StageTask) -> bool:
    return all(storage.read_success(uri) is None for uri in task.outputs.values())


def runaway_features(platform: Platform, bucket: str, demo_csv: Path, what: str,
                     timeout: int) -> StageTask:
    """A features task whose query would run for hours, on committed encounters."""
    root = f"{bucket}/{platform.name}"
    encounters = committed_encounters(root, demo_csv)
    spec = spec_with(str(demo_csv), stages__features__params__sql=RUNAWAY_FEATURES["sql"])
    return task_of(spec, root, platform.run_id(what), "features",
                   {"encounters": encounters}, timeout=timeout)


# -- the contract ----------------------------------------------------------------

def test_success_commits_what_in_process_commits(platform: Platform, s3_bucket: str,
                                                  demo_csv: Path) -> None:
    spec = spec_with(upload_demo(demo_csv, s3_bucket))
    run_id = platform.run_id("ok")
    task = task_of(spec, f"{s3_bucket}/{platform.name}", run_id, "ingest")
    backend = platform.backend
    handle = backend.submit(task)
    result = backend.wait(handle)
    assert result.ok and result.exit_code == 0, result
    # Fingerprints depend only on the bytes: the same run id under another root,
    # run in this process from the task object (the task JSON keeps the declared
    # column order, so every backend commits the same bytes).
    reference = task_of(spec, f"{s3_bucket}/in-process", run_id, "ingest")
    run_task(reference)
    for output in STAGES["ingest"].outputs:
        assert storage.committed(task.outputs[output]).fingerprint == \
            storage.committed(reference.outputs[output]).fingerprint, output
    assert storage.committed(task.outputs["encounters"]).rows > 0
    eventually(lambda: not platform.running(handle), 30, "the stage to be gone")


def test_bad_input_fails_fast_and_is_not_retried(platform: Platform, s3_bucket: str,
                                                 demo_csv: Path) -> None:
    spec = spec_with(upload_demo(demo_csv, s3_bucket),
                     stages__ingest__params__columns__ward_id="string")
    root = f"{s3_bucket}/{platform.name}"
    task = task_of(spec, root, platform.run_id("bad"), "ingest")
    result = platform.backend.wait(platform.backend.submit(task))
    assert result.cause is Cause.BAD_INPUT and result.exit_code == 2, result
    assert "ward_id" in result.message
    assert nothing_committed(task)

    run_id = platform.run_id("bad-run")
    with pytest.raises(StageFailed) as failed:
        Launcher(spec, root, platform.backend, run_id, ["ingest"]).run()
    assert failed.value.cause is Cause.BAD_INPUT and "ward_id" in str(failed.value)
    attempts = RunManifest.load(root, run_id).stage("ingest").attempts
    assert [(a.number, a.cause, a.exit_code) for a in attempts] == [(1, Cause.BAD_INPUT, 2)]


# The local backend sets no memory limit by design (a stage is a child process
# of the launcher, bounded by the machine; see backends/local.py), so it has no
# limit to be killed at and is not part of this test. On SageMaker the limit is
# the instance type's memory, not resources.memory: its out-of-memory test is in
# tests/test_sagemaker_backend.py.
@pytest.mark.parametrize("platform", ["container", "kubernetes"], indirect=True)
def test_out_of_memory_names_the_setting_to_raise(platform: Platform, s3_bucket: str) -> None:
    spec = spec_with(upload_wide_parquet(s3_bucket),
                     stages__ingest__params__format="parquet",
                     stages__ingest__params__columns={"encounter_id": "int64",
                                                      "note": "string"},
                     stages__ingest__params__required=["encounter_id"],
                     # the shipped checks name columns this file does not have
                     stages__ingest__params__checks=None,
                     stages__ingest__resources__memory="192Mi",
                     stages__ingest__resources__timeout_seconds=300)
    task = task_of(spec, f"{s3_bucket}/{platform.name}", platform.run_id("oom"), "ingest")
    backend = platform.backend
    handle = backend.submit(task)
    result = backend.wait(handle)
    assert result.cause is Cause.OUT_OF_MEMORY, result
    assert "memory limit of 192Mi" in result.message
    assert "stages.ingest.resources.memory" in result.message
    assert "stages.ingest.resources.memory" in result.advice()
    assert nothing_committed(task)
    eventually(lambda: not platform.running(handle), 30, "the stage to be gone")


def test_deadline_stops_the_stage(platform: Platform, s3_bucket: str, demo_csv: Path) -> None:
    task = runaway_features(platform, s3_bucket, demo_csv, "late", timeout=5)
    backend = platform.backend
    started = time.monotonic()
    handle = backend.submit(task)
    result = backend.wait(handle)
    took = time.monotonic() - started
    assert result.cause is Cause.DEADLINE, result
    assert "timeout of 5 s" in result.message
    assert "stages.features.resources.timeout_seconds" in result.advice()
    # Stopped by the platform at its deadline: Kubernetes' own safety net
    # (deadline + 60 s) would take much longer.
    assert took < 45, took
    assert nothing_committed(task)
    eventually(lambda: not platform.running(handle), 30, "the stopped stage to be gone")
    if platform.kube is not None:
        job = platform.kube.cluster.batch.read_namespaced_job(
            handle.job, NAMESPACE, _preload_content=False).json()  # type: ignore[attr-defined]
        reasons = [c.get("reason") for c in job["status"]["conditions"] if c["type"] == "Failed"]
        assert reasons == ["DeadlineExceeded"]
    if platform.harness is not None:  # SageMaker enforced MaxRuntimeInSeconds itself
        job = platform.harness.jobs[handle.ref]
        assert (job.status, job.request["StoppingCondition"]["MaxRuntimeInSeconds"]) == \
            ("Stopped", 5)


def test_cancel_stops_a_running_stage(platform: Platform, s3_bucket: str,
                                      demo_csv: Path) -> None:
    task = runaway_features(platform, s3_bucket, demo_csv, "stop", timeout=600)
    backend = platform.backend
    handle = backend.submit(task)
    eventually(lambda: backend.poll(handle, 0.2) == "running", 90, "the stage to run")
    if platform.kube is None:  # pods' logs are only served once they end (kmock)
        starting = STARTING.format(stage="features")
        eventually(lambda: starting in backend.logs(handle), 60, "the stage to start")
    started = time.monotonic()
    backend.cancel(handle)
    result = backend.wait(handle)
    assert result.cause is Cause.CANCELLED, result
    assert time.monotonic() - started < 30
    eventually(lambda: not platform.running(handle), 30, "the cancelled stage to be gone")
    if platform.kube is not None:  # the Job is deleted, and its pods with it
        assert not platform.kube.cluster.job_exists(handle.job)  # type: ignore[attr-defined]
        eventually(lambda: platform.pods(handle) == [], 30, "the pods to be deleted")
    if platform.harness is not None:  # StopProcessingJob, and the job says Stopped
        eventually(lambda: platform.harness.jobs[handle.ref].status == "Stopped", 30,
                   "the job to be Stopped")
    assert nothing_committed(task)


def test_logs_outlive_the_platform(platform: Platform, s3_bucket: str, demo_csv: Path) -> None:
    spec = spec_with(upload_demo(demo_csv, s3_bucket),
                     stages__ingest__params__columns__ward_id="string")
    root = f"{s3_bucket}/{platform.name}"
    run_id = platform.run_id("logs")
    task = task_of(spec, root, run_id, "ingest")
    backend = platform.backend
    handle = backend.submit(task)
    result = backend.wait(handle)
    assert result.cause is Cause.BAD_INPUT, result
    # The platform forgets the task: the local log file and the container are
    # removed by wait(); on Kubernetes the pods go (TTL, or a person).
    eventually(lambda: not platform.running(handle), 30, "the stage to be gone")
    if platform.name == "local":
        assert not handle.logfile.exists()  # type: ignore[attr-defined]
    if platform.kube is not None:
        for pod in platform.pods(handle):
            platform.kube.cluster.core.delete_namespaced_pod(pod, NAMESPACE)
        assert platform.pods(handle) == []
    kept = layout.log_uri(root, run_id, "ingest", 1, None)
    assert result.logs == (kept,)
    starting = STARTING.format(stage="ingest")
    assert starting in storage.read_text(kept)
    text = backend.logs(handle)
    assert starting in text and "ward_id" in text


# -- sharding ----------------------------------------------------------------------

def terminate_shard_once(platform: Platform, task_uri: str, run_id: str,
                         done: threading.Event, killed: list[str]) -> None:
    """SIGTERM the worker of shard 1's first attempt as soon as it runs.

    The fault a platform really deals out: a worker terminated mid-run (a
    node drained, a spot instance reclaimed, an operator's kill). The stage
    exits 143 (128 + SIGTERM), a retryable failure, and only that shard failed.
    """
    while not done.is_set() and not killed:
        if platform.name == "local":
            for pid in os.listdir("/proc"):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except (OSError, ValueError):
                    continue
                if pid.isdigit() and task_uri.encode() in cmdline:
                    os.kill(int(pid), signal.SIGTERM)
                    killed.append(f"pid {pid}")
                    break
        else:
            if platform.kube is None:  # the container backend's name for it
                names = [n for n in containers(run_id) if n.startswith(f"{run_id}-score-1-a1-")]
            else:  # the first pod of completion index 1 of the score Job, once the
                # stage has started: python is PID 1 there (no init), and PID 1
                # ignores SIGTERM until the stage installs its handler.
                names = [f"{r.pod}-stage" for r in platform.kube.kubelet.runs
                         if r.job == f"{run_id}-score-a1" and r.index == 1][:1]
                names = [n for n in names if STARTING.format(stage="score") in subprocess.run(
                    ["podman", "logs", n], capture_output=True, text=True,
                    check=False).stderr]
            for name in names:
                if subprocess.run(["podman", "kill", "--signal", "TERM", name],
                                  capture_output=True, check=False).returncode == 0:
                    killed.append(name)
        done.wait(0.02)


# SageMaker runs the same fault (host algo-2 terminated mid-run, only its shard
# computed again) inside tests/test_sagemaker_backend.py's end-to-end run: one
# pipeline run instead of two keeps the CI time within its budget.
@pytest.mark.parametrize("platform", ["local", "container", "kubernetes"], indirect=True)
def test_failed_shard_is_retried_alone(platform: Platform, s3_bucket: str,
                                       demo_csv: Path) -> None:
    spec = spec_with(upload_demo(demo_csv, s3_bucket), stages__score__shards=2)
    root = f"{s3_bucket}/{platform.name}"
    run_id = platform.run_id("shards")
    # On Kubernetes all shards of an attempt are one Indexed Job (fans_out_shards),
    # and the Job controller retries a failed index alone, within
    # backoffLimitPerIndex (the backend's shard_retries, 2 by default).
    backend = platform.backend
    done, killed = threading.Event(), []
    killer = threading.Thread(target=terminate_shard_once, args=(
        platform, layout.task_uri(root, run_id, "score", 1, 1), run_id, done, killed))
    killer.start()
    try:
        manifest = Launcher(spec, root, backend, run_id).run()
    finally:
        done.set()
        killer.join()
    assert killed, "shard 1's first attempt was never seen running"
    attempts = sorted((a.number, a.shard, a.cause, a.exit_code)
                      for a in manifest.stage("score").attempts)
    if platform.kube is None:  # the launcher retried shard 1 alone
        assert attempts == [(1, 0, Cause.SUCCEEDED, 0), (1, 1, Cause.USER_ERROR, 143),
                            (2, 1, Cause.SUCCEEDED, 0)]
    else:  # one attempt of the launcher; inside it, Kubernetes retried index 1 alone
        # (one Indexed Job runs every shard: its attempt is of no single shard)
        assert attempts == [(1, None, Cause.SUCCEEDED, 0)]
        runs = [(r.index, r.exit_code) for r in platform.kube.kubelet.runs
                if r.job == f"{run_id}-score-a1"]
        assert sorted(runs, key=lambda r: r[0]) == [(0, 0), (1, 143), (1, 0)]
        # Both pods' output is kept in shard 1's log.
        text = storage.read_text(layout.log_uri(root, run_id, "score", 1, 1))
        assert text.count(STARTING.format(stage="score")) == 2
    predictions = manifest.stage("score").outputs["predictions"]
    union = storage.committed(predictions)
    shards = [storage.committed(layout.shard_uri(predictions, i)) for i in range(2)]
    assert union.meta.get("shards") == 2
    assert union.rows == sum(s.rows for s in shards) > 0
    assert all(s.rows > 0 for s in shards)
    assert containers(run_id) == []
