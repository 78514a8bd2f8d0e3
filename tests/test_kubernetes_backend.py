"""KubernetesBackend against a Kubernetes API on loopback (kmock), through the real client.

kmock runs no controllers, so the test plays the Job controller and the
kubelet itself: it creates the Job's pods and writes Job and pod status
through the same HTTP API the backend watches. Faults (500, 429, 410) are kmock
reactions on single requests. The translators are also tested on their own,
on dicts shaped like what the API server sends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
from conftest import eventually
from kube_cluster import JOBS, PODS, Cluster

from batchline import layout, storage
from batchline.backends.base import Handle
from batchline.backends.kubernetes import (
    ANNOTATION_CACHE_KEY,
    ANNOTATION_TASK_URI,
    KubernetesBackend,
    Retry,
)
from batchline.backends.kubernetes_job import job_manifest
from batchline.backends.kubernetes_status import (
    cause_from_k8s,
    is_pod_of,
    phase_from_k8s,
)
from batchline.errors import BackendError
from batchline.task import Cause, StageResult, StageTask

T0 = "2026-11-26T20:00:00Z"


# ---------------------------------------------------------------------------
# API-shaped objects, as the Job controller and the kubelet write them
# ---------------------------------------------------------------------------

def job_obj(name: str = "rl-1-train-1", *, conditions: list[dict[str, Any]] | None = None,
            **status: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"batchline.dev/stage": "train"}},
            "spec": {"backoffLimit": 2},
            "status": {**status, **({"conditions": conditions} if conditions else {})}}


def condition(kind: str, reason: str = "", message: str = "",
              status: str = "True") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastProbeTime": T0, "lastTransitionTime": T0}


def terminated(code: int, reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "startedAt": T0, "finishedAt": T0,
                           "containerID": "containerd://abc"}}


def pod_status(phase: str, state: dict[str, Any] | None = None, *,
               conditions: list[dict[str, Any]] | None = None, reason: str | None = None,
               message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "startTime": T0,
                              "conditions": conditions or [condition("PodScheduled")]}
    if state is not None:
        status["containerStatuses"] = [{"name": "stage", "image": "img", "imageID": "",
                                        "ready": "running" in state, "restartCount": 0,
                                        "state": state}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status


def pod_obj(job: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": T0,
                         "labels": {"batch.kubernetes.io/job-name": job, "job-name": job},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": job, "uid": "u1", "controller": True}]},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "stage", "image": "img"}]},
            "status": status}


RUNNING = {"running": {"startedAt": T0}}
PULL_BACKOFF = {"waiting": {"reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "registry.invalid/train:1"'}}
UNSCHEDULABLE = condition("PodScheduled", "Unschedulable",
                          "0/3 nodes are available: 3 Insufficient memory.", status="False")
DISRUPTED = condition("DisruptionTarget", "EvictionByEvictionAPI",
                      "Eviction API: evicting")


# ---------------------------------------------------------------------------
# Translators on their own
# ---------------------------------------------------------------------------

def test_complete_job_succeeds() -> None:
    result = cause_from_k8s(job_obj(conditions=[condition("Complete")], succeeded=1), [])
    assert result == StageResult("train", Cause.SUCCEEDED, 0, backend_ref="ns/rl-1-train-1")


def test_active_job_without_trouble_is_waited_on() -> None:
    job = job_obj(active=1)
    pods = [pod_obj("rl-1-train-1", "p1", pod_status("Running", RUNNING))]
    assert cause_from_k8s(job, pods) is None
    assert phase_from_k8s(job, pods) == "running"
    assert phase_from_k8s(job, []) == "pending"
    failed = [pod_obj("rl-1-train-1", "p1", pod_status("Failed", terminated(1)))]
    assert phase_from_k8s(job, failed) == "running"  # no flicker while the Job decides
    retry = [*failed, pod_obj("rl-1-train-1", "p2", pod_status("Pending"))]
    assert phase_from_k8s(job, retry) == "pending"


@pytest.mark.parametrize(("reason", "pod", "cause", "code"), [
    ("BackoffLimitExceeded", pod_status("Failed", terminated(137, "OOMKilled")),
     Cause.OUT_OF_MEMORY, 137),
    ("PodFailurePolicy", pod_status("Failed", terminated(2)), Cause.BAD_INPUT, 2),
    ("BackoffLimitExceeded", pod_status("Failed", terminated(1)), Cause.USER_ERROR, 1),
    ("BackoffLimitExceeded", pod_status("Failed", terminated(137, "Error"),
                                        conditions=[DISRUPTED]), Cause.EVICTED, None),
    ("BackoffLimitExceeded", pod_status("Failed", reason="Evicted",
                                        message="The node was low on resource: memory."),
     Cause.EVICTED, None),
    ("DeadlineExceeded", pod_status("Failed", terminated(143)), Cause.DEADLINE, None),
])
def test_failed_job_cause_comes_from_reason_and_pod(reason: str, pod: dict[str, Any],
                                                    cause: Cause, code: int | None) -> None:
    job = job_obj(conditions=[condition("FailureTarget", reason), condition("Failed", reason)],
                  failed=1)
    result = cause_from_k8s(job, [pod_obj("rl-1-train-1", "p1", pod)])
    assert result is not None
    assert (result.cause, result.exit_code) == (cause, code)


def test_pod_failure_policy_exit_code_read_from_message_when_pod_is_gone() -> None:
    message = ("Container stage for pod ns/p1 failed with exit code 2 matching FailJob rule "
               "at index 0")
    job = job_obj(conditions=[condition("Failed", "PodFailurePolicy", message)], failed=1)
    result = cause_from_k8s(job, [])
    assert result is not None and (result.cause, result.exit_code) == (Cause.BAD_INPUT, 2)


def test_latest_failed_pod_explains_the_failure() -> None:
    first = pod_obj("j", "p1", pod_status("Failed", terminated(137, "OOMKilled")))
    second = pod_obj("j", "p2", {**pod_status("Failed", terminated(1)),
                                 "startTime": "2026-11-26T20:05:00Z"})
    job = job_obj("j", conditions=[condition("Failed", "BackoffLimitExceeded")], failed=2)
    result = cause_from_k8s(job, [second, first])
    assert result is not None and (result.cause, result.exit_code) == (Cause.USER_ERROR, 1)


def test_image_pull_ends_an_active_job() -> None:
    pods = [pod_obj("j", "p1", pod_status("Pending", PULL_BACKOFF))]
    result = cause_from_k8s(job_obj("j", active=1), pods)
    assert result is not None and result.cause is Cause.IMAGE_PULL
    assert "registry.invalid/train:1" in result.message


def test_unschedulable_only_after_grace() -> None:
    pods = [pod_obj("j", "p1", pod_status("Pending", conditions=[UNSCHEDULABLE]))]
    since = datetime.fromisoformat(T0)
    job = job_obj("j", active=1)
    assert cause_from_k8s(job, pods, now=since + timedelta(seconds=30),
                          unschedulable_grace=60) is None
    result = cause_from_k8s(job, pods, now=since + timedelta(seconds=61), unschedulable_grace=60)
    assert result is not None and result.cause is Cause.UNSCHEDULABLE
    assert result.message == "0/3 nodes are available: 3 Insufficient memory."


def test_unknown_values_are_an_open_world(caplog: pytest.LogCaptureFixture) -> None:
    # A newer cluster may send values this batchline does not know: they are
    # logged with their raw text and the wait goes on; a run never crashes.
    caplog.set_level(logging.WARNING, logger="batchline")
    assert cause_from_k8s(job_obj(conditions=[condition("Exploded")], active=1), []) is None
    assert "unknown Job condition type 'Exploded'" in caplog.text
    assert "known: Complete, Failed" in caplog.text
    failed = cause_from_k8s(job_obj(conditions=[condition("Failed", "CosmicRay", "a ray")]), [])
    assert failed is not None and failed.cause is Cause.USER_ERROR
    assert failed.message == "CosmicRay: a ray"
    pods = [pod_obj("j", "p", pod_status("Sleeping"))]
    assert phase_from_k8s(job_obj(), pods) == "running"
    assert cause_from_k8s(job_obj(active=1), pods) is None
    assert "unknown pod phase 'Sleeping'" in caplog.text


def test_pods_belong_to_a_job_by_label_or_owner() -> None:
    pod = pod_obj("j", "p", pod_status("Running"))
    assert is_pod_of(pod, "j") and not is_pod_of(pod, "k")
    pod["metadata"]["labels"] = {}
    assert is_pod_of(pod, "j")


# ---------------------------------------------------------------------------
# kmock on loopback; the test writes status as the Job controller would
# ---------------------------------------------------------------------------

def add_pod(cluster: Cluster, job: str, name: str, status: dict[str, Any],
            log: str = "") -> None:
    """Create a pod of `job` as the Job controller would, with its canned log."""
    cluster.can_log(name, log)
    cluster.create_pod(pod_obj(job, name, {}))
    cluster.set_pod(name, status)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    kube = Cluster()
    yield kube
    kube.close()


class Waiter:
    """Runs backend.wait in a thread so the test can play the cluster meanwhile."""

    def __init__(self, backend: KubernetesBackend, handle: Handle) -> None:
        self.phases: list[str] = []
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(backend, handle), daemon=True)
        self.thread.start()

    def _run(self, backend: KubernetesBackend, handle: Handle) -> None:
        try:
            self.outcome.append(backend.wait(handle, lambda _t, p: self.phases.append(p)))
        except Exception as exc:
            self.outcome.append(exc)

    def result(self, timeout: float = 15.0) -> StageResult:
        self.thread.join(timeout)
        assert self.outcome, f"backend.wait did not return within {timeout}s"
        if isinstance(self.outcome[0], Exception):
            raise self.outcome[0]
        result: StageResult = self.outcome[0]
        return result


def make_task(root: Path, stage: str = "train", cache_key: str = "k1",
              attempt: int = 1) -> StageTask:
    run_id = f"rl-{uuid.uuid4().hex[:6]}"
    return StageTask(run_id=run_id, stage=stage, inputs={}, outputs={}, params={},
                     storage_root=str(root), cache_key=cache_key, attempt=attempt,
                     task_uri=layout.task_uri(str(root), run_id, stage, attempt),
                     image="localhost/batchline-train:test")


def make_backend(cluster: Cluster, **options: Any) -> KubernetesBackend:
    options = {"poll_seconds": 0.05, "watch_seconds": 2, "unschedulable_grace_seconds": 0.0,
               "retry": Retry(attempts=4, initial=0.05, maximum=0.2), **options}
    return KubernetesBackend(namespace=cluster.namespace, api_client=cluster.api_client, **options)


def started(cluster: Cluster, tmp_path: Path, **options: Any) -> tuple[Waiter, Handle, str]:
    backend = make_backend(cluster, **options)
    handle = backend.submit(make_task(tmp_path))
    waiter = Waiter(backend, handle)
    eventually(lambda: waiter.phases or waiter.outcome, what="the backend to see the job")
    return waiter, handle, handle.job


# ---------------------------------------------------------------------------
# The backend over HTTP
# ---------------------------------------------------------------------------

def test_success_copies_logs_into_storage(cluster: Cluster, tmp_path: Path) -> None:
    waiter, handle, job = started(cluster, tmp_path)
    assert waiter.phases == ["pending"]
    add_pod(cluster, job, f"{job}-abc", pod_status("Running", RUNNING),
            log="reading features\ntrained 100 trees\n")
    cluster.set_job(job, active=1, ready=1)
    eventually(lambda: "running" in waiter.phases, what="phase running")
    cluster.set_pod(f"{job}-abc", pod_status("Succeeded", terminated(0, "Completed")))
    cluster.finish_job(job, "Complete")

    result = waiter.result()
    assert result.ok and result.exit_code == 0
    assert result.backend_ref == f"ns/{job}"
    assert waiter.phases == ["pending", "running"]
    task = handle.task
    copied = storage.read_text(layout.log_uri(task.storage_root, task.run_id, task.stage, 1))
    assert copied == "reading features\ntrained 100 trees\n"
    assert result.log_tail == "reading features\ntrained 100 trees"


def test_submitted_job_is_the_builders_manifest(cluster: Cluster, tmp_path: Path) -> None:
    backend = make_backend(cluster)
    task = make_task(tmp_path)
    handle = backend.submit(task)
    stored = cluster.batch.read_namespaced_job(handle.job, "ns",
                                               _preload_content=False).json()
    assert stored == job_manifest(task, namespace="ns", backoff_limit=0,
                                  env=backend.options.env or None)


def test_conflict_with_the_same_task_adopts_the_job(cluster: Cluster, tmp_path: Path) -> None:
    task = make_task(tmp_path)
    manifest = job_manifest(task, namespace="ns")
    cluster.batch.create_namespaced_job("ns", manifest)
    backend = make_backend(cluster)

    handle = backend.submit(task)
    assert handle.job == manifest["metadata"]["name"]
    cluster.finish_job(handle.job, "Complete")
    assert backend.wait(handle).ok


def test_conflict_with_another_task_names_job_and_difference(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    task = make_task(tmp_path)
    cluster.batch.create_namespaced_job(
        "ns", job_manifest(make_task_like(task, cache_key="other"), namespace="ns"))
    name = job_manifest(task, namespace="ns")["metadata"]["name"]

    with pytest.raises(BackendError) as err:
        make_backend(cluster).submit(task)
    assert f"job ns/{name} already exists for a different task" in str(err.value)
    assert f"{ANNOTATION_CACHE_KEY}: existing 'other', this task 'k1'" in str(err.value)
    assert ANNOTATION_TASK_URI not in str(err.value)


def make_task_like(task: StageTask, **changes: Any) -> StageTask:
    return dataclasses.replace(task, **changes)


def test_server_error_on_create_is_retried(cluster: Cluster, tmp_path: Path) -> None:
    # kmock stores the Job before the injected 500 goes out, like an API server
    # whose response got lost after the write: the retry meets 409 and adopts.
    failure = cluster.react(lambda emu: emu["create", JOBS][:1]
                            << kmock.KubernetesError(500, "InternalError", "etcd timeout"))
    backend = make_backend(cluster)
    handle = backend.submit(make_task(tmp_path))
    assert len(failure) == 1
    assert cluster.requests("create", JOBS) == 2
    cluster.finish_job(handle.job, "Complete")
    assert backend.wait(handle).ok


def test_throttling_and_server_errors_while_watching_are_retried(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    throttled = cluster.react(lambda emu: emu["list", PODS][:2]
                              << kmock.KubernetesError(429, "TooManyRequests", "slow down"))
    broken = cluster.react(lambda emu: emu["watch", JOBS][:1]
                           << kmock.KubernetesError(503, "ServiceUnavailable", "restarting"))
    waiter, _handle, job = started(cluster, tmp_path)
    cluster.finish_job(job, "Complete")
    assert waiter.result().ok
    assert len(throttled) == 2 and len(broken) == 1


def test_errors_that_outlast_the_retries_raise_backend_error(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    down = cluster.react(lambda emu: emu["list", PODS]
                         << kmock.KubernetesError(503, "ServiceUnavailable", "down"))
    backend = make_backend(cluster)
    handle = backend.submit(make_task(tmp_path))
    waiter = Waiter(backend, handle)
    with pytest.raises(BackendError, match="cannot watch the pods of job .*HTTP 503"):
        waiter.result()
    assert len(down) == 4  # Retry(attempts=4): bounded


@pytest.mark.parametrize("how", ["error event", "http status"])
def test_watch_gone_relists_and_still_sees_completion(cluster: Cluster, tmp_path: Path,
                                                      how: str) -> None:
    gone = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
            "reason": "Expired", "message": "too old resource version: 1 (42)"}

    def current_job(request: kmock.Request) -> dict[str, Any]:
        # The watch delivers the job as it is now, then expires mid-stream.
        jobs = [obj.raw for key, obj in cluster.emu.objects.items()
                if key[0] == JOBS and not obj.deleted]
        return {"type": "ADDED", "object": jobs[0]}

    def inject(emu: kmock.KubernetesEmulator) -> Any:
        if how == "error event":
            return emu["watch", JOBS][:1] << (current_job, {"type": "ERROR", "object": gone})
        return emu["watch", JOBS][:1] << kmock.KubernetesError(410, "Expired", gone["message"])

    expired = cluster.react(inject)
    waiter, _handle, job = started(cluster, tmp_path)
    eventually(lambda: len(expired) == 1, what="the watch to expire")
    eventually(lambda: cluster.requests("list", JOBS) >= 2, what="a second list of jobs")
    cluster.finish_job(job, "Complete")
    assert waiter.result().ok


def test_oom_killed_pod(cluster: Cluster, tmp_path: Path) -> None:
    waiter, _handle, job = started(cluster, tmp_path)
    add_pod(cluster, job, f"{job}-p1", pod_status("Failed", terminated(137, "OOMKilled")),
            log="training on 9000000 rows\n")
    cluster.finish_job(job, "Failed", "BackoffLimitExceeded", "Job has reached the specified "
                       "backoff limit")
    result = waiter.result()
    assert (result.cause, result.exit_code) == (Cause.OUT_OF_MEMORY, 137)
    assert "raise stages.train.resources.memory" in result.advice()
    assert result.log_tail == "training on 9000000 rows"


def test_image_pull_failure_ends_wait_and_deletes_job(cluster: Cluster, tmp_path: Path) -> None:
    waiter, _handle, job = started(cluster, tmp_path)
    add_pod(cluster, job, f"{job}-p1", pod_status("Pending", PULL_BACKOFF))
    cluster.set_job(job, active=1)
    result = waiter.result()
    assert result.cause is Cause.IMAGE_PULL
    assert 'Back-off pulling image "registry.invalid/train:1"' in result.message
    assert not cluster.job_exists(job)


def test_unschedulable_after_grace_ends_wait_and_deletes_job(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    waiter, _handle, job = started(cluster, tmp_path, unschedulable_grace_seconds=0.5)
    fresh = {**UNSCHEDULABLE, "lastTransitionTime": datetime.now(UTC).isoformat()}
    add_pod(cluster, job, f"{job}-p1", pod_status("Pending", conditions=[fresh]))
    began = time.monotonic()
    result = waiter.result()
    assert time.monotonic() - began >= 0.3  # the grace period was honoured
    assert result.cause is Cause.UNSCHEDULABLE
    assert result.message == "0/3 nodes are available: 3 Insufficient memory."
    assert not cluster.job_exists(job)


def test_deadline(cluster: Cluster, tmp_path: Path) -> None:
    waiter, _handle, job = started(cluster, tmp_path)
    add_pod(cluster, job, f"{job}-p1", pod_status("Failed", terminated(143)))
    cluster.finish_job(job, "Failed", "DeadlineExceeded", "Job was active longer than specified "
                       "deadline")
    result = waiter.result()
    assert result.cause is Cause.DEADLINE
    assert result.message == (f"ns/{job} ran past its timeout of 3600 s and was stopped; "
                              "Job was active longer than specified deadline")


def test_eviction(cluster: Cluster, tmp_path: Path) -> None:
    waiter, _handle, job = started(cluster, tmp_path)
    add_pod(cluster, job, f"{job}-p1", pod_status("Failed", terminated(137),
                                                  conditions=[DISRUPTED]))
    cluster.finish_job(job, "Failed", "BackoffLimitExceeded", "backoff limit")
    result = waiter.result()
    assert result.cause is Cause.EVICTED and "EvictionByEvictionAPI" in result.message


def test_bad_input_and_user_error_carry_exit_code_and_log_tail(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    waiter, _handle, job = started(cluster, tmp_path)
    lines = "".join(f"line {i}\n" for i in range(30))
    add_pod(cluster, job, f"{job}-p1", pod_status("Failed", terminated(1)),
            log=lines + '{"error": "division by zero"}\n')
    cluster.finish_job(job, "Failed", "BackoffLimitExceeded", "backoff limit")
    result = waiter.result()
    assert (result.cause, result.exit_code) == (Cause.USER_ERROR, 1)
    assert result.message == "exit 1: division by zero"
    assert result.log_tail.splitlines()[0] == "line 11"
    assert result.log_tail.endswith('{"error": "division by zero"}')

    waiter, _handle, job = started(cluster, tmp_path)
    add_pod(cluster, job, f"{job}-p1", pod_status("Failed", terminated(2)))
    cluster.finish_job(job, "Failed", "PodFailurePolicy",
                       f"Container stage for pod ns/{job}-p1 failed with exit code 2 matching "
                       "FailJob rule at index 0")
    result = waiter.result()
    assert (result.cause, result.exit_code) == (Cause.BAD_INPUT, 2)


def test_cancel_deletes_the_job_and_ends_the_wait(cluster: Cluster, tmp_path: Path) -> None:
    backend = make_backend(cluster)
    handle = backend.submit(make_task(tmp_path))
    waiter = Waiter(backend, handle)
    eventually(lambda: waiter.phases, what="the backend to see the job")
    backend.cancel(handle)
    assert not cluster.job_exists(handle.job)
    assert waiter.result().cause is Cause.CANCELLED
    backend.cancel(handle)  # collected already: nothing more to do
    deletes = [r for r in cluster.emu["delete", JOBS]]
    assert len(deletes) == 1
    backend.stop(handle)  # a second delete meets 404 and is fine
    assert len(list(cluster.emu["delete", JOBS])) == 2
    assert deletes[0].params["propagationPolicy"] == "Background"


def test_logs_reads_pods_then_the_stored_copy(cluster: Cluster, tmp_path: Path) -> None:
    waiter, handle, job = started(cluster, tmp_path)
    add_pod(cluster, job, f"{job}-p1", pod_status("Succeeded", terminated(0, "Completed")),
            log="all good\n")
    cluster.finish_job(job, "Complete")
    assert waiter.result().ok
    backend = make_backend(cluster)
    assert backend.logs(handle) == "all good\n"
    cluster.core.delete_namespaced_pod(f"{job}-p1", "ns")  # the Job's TTL took it
    assert backend.logs(handle) == "all good\n"


def test_kubeconfig_context_is_used_and_credentials_stay_out_of_logs(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = "s3cr3t-" + uuid.uuid4().hex
    kubeconfig = tmp_path / "kubeconfig"
    server = cluster.host
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "kmock", "cluster": {"server": server}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "ci", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "ci"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "ci"}}],
    }))
    caplog.set_level(logging.DEBUG, logger="batchline")
    backend = KubernetesBackend(namespace="ns", context="kmock", kubeconfig=str(kubeconfig),
                                poll_seconds=0.05, watch_seconds=2)
    handle = backend.submit(make_task(tmp_path))
    cluster.finish_job(handle.job, "Complete")
    assert backend.wait(handle).ok
    created = next(iter(cluster.emu["create", JOBS]))
    assert created.headers["Authorization"] == f"Bearer {token}"
    assert server in caplog.text
    assert token not in caplog.text


def test_in_cluster_outside_a_pod_says_what_to_do() -> None:
    with pytest.raises(BackendError, match="pass --context NAME, or --in-cluster inside a pod"):
        KubernetesBackend(namespace="ns", in_cluster=True)


def test_indexed_pods_logs_go_to_their_shard(cluster: Cluster, tmp_path: Path) -> None:
    backend = make_backend(cluster)
    task = dataclasses.replace(make_task(tmp_path, stage="score"), shard_count=2)
    handle = backend.submit(task)
    job = handle.job
    for index in (0, 1):
        pod = pod_obj(job, f"{job}-{index}-x", {})
        pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] = str(index)
        cluster.can_log(f"{job}-{index}-x", f"shard {index} scored\n")
        cluster.create_pod(pod)
        cluster.set_pod(f"{job}-{index}-x", pod_status("Succeeded", terminated(0, "Completed")))
    cluster.finish_job(job, "Complete")
    assert backend.wait(handle).ok
    for index in (0, 1):
        uri = layout.log_uri(str(tmp_path), task.run_id, "score", 1, index)
        assert storage.read_text(uri) == f"--- pod {job}-{index}-x ---\nshard {index} scored\n"


def test_let_go_ends_the_watch_threads_and_leaves_the_job(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """A launcher whose pod goes away stops watching at once (a watch thread alive when
    the interpreter exits can abort it: CI saw SIGABRT) and leaves the Job for the
    launcher that adopts it."""
    backend = make_backend(cluster, watch_seconds=120)
    handle = backend.submit(make_task(tmp_path))
    eventually(lambda: cluster.requests("watch", JOBS) >= 1 and
               cluster.requests("watch", PODS) >= 1, what="both watch streams open")
    backend.let_go(handle)
    assert [w._thread.is_alive() for w in handle.watchers] == [False, False]
    jobs = [key for key, obj in cluster.emu.objects.items()
            if key[0] == JOBS and not obj.deleted]
    assert len(jobs) == 1  # the Job runs on, for the next launcher
