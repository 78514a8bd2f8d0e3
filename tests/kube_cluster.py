"""A Kubernetes stand-in for tests: kmock's API on loopback, and a podman "kubelet".

`Cluster` serves kmock's stateful Kubernetes emulator over real HTTP from a
background event loop, so the official `kubernetes` client (in the test, in
the backend, or in a `batchline` subprocess via a kubeconfig) talks to it as
to an API server. kmock runs no controllers; `PodmanKubelet` plays the Job
controller and the kubelet: it runs each new Job's pod template with
`podman kube play` and writes pod and Job status back through the API.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
import yaml
from kubernetes import client, watch

JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
CONTAINER = "stage"  # the container name batchline's Job template uses


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _own_empty_dirs(spec: dict[str, Any], pod_name: str) -> dict[str, Any]:
    """Give each pod its own emptyDir volumes, as a kubelet does.

    podman 4.3's `kube play` makes an emptyDir a named volume called after the
    pod's volume, so two pods of one indexed Job played at once would share
    (or race to create) the same volume "tmp"; naming it after the pod keeps
    them apart, and `kube down` still removes it."""
    spec = copy.deepcopy(spec)
    renamed = {v["name"]: f"{pod_name}-{v['name']}" for v in spec.get("volumes", [])
               if "emptyDir" in v}
    for volume in spec.get("volumes", []):
        volume["name"] = renamed.get(volume["name"], volume["name"])
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return spec


class Cluster:
    """kmock's Kubernetes emulator served on 127.0.0.1 from a background event loop."""

    def __init__(self, namespace: str = "ns") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emu, self.server = self._run(self._start())
        self.host = f"http://{self.server.host}:{self.server.port}"
        self.api_client = client.ApiClient(client.Configuration(host=self.host))
        self.batch = client.BatchV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.namespace = namespace

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self) -> tuple[kmock.KubernetesEmulator, kmock.Server]:
        emu = kmock.KubernetesEmulator()
        await emu.__aenter__()
        server = kmock.Server(emu)
        await server.__aenter__()
        # Declared so that listing works before the first object exists.
        emu.resources["batch/v1/jobs"] = kmock.ResourceInfo(kind="Job", namespaced=True)
        emu.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
        emu.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True)
        return emu, server

    async def _stop(self) -> None:
        await self.server.__aexit__(None, None, None)
        await self.emu.__aexit__(None, None, None)

    def close(self) -> None:
        self.api_client.close()
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def kubeconfig(self, path: Path, context: str = "kmock") -> Path:
        """Write a kubeconfig whose `context` points at this server."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "kmock", "cluster": {"server": self.host}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": context, "context": {"cluster": "kmock", "user": "test",
                                                       "namespace": self.namespace}}],
        }))
        return path

    def react(self, make: Callable[[kmock.KubernetesEmulator], Any]) -> Any:
        """Add a kmock reaction on the server's own loop; returns the reaction."""
        async def add() -> Any:
            return make(self.emu)
        return self._run(add())

    def requests(self, *criteria: Any) -> int:
        """How many requests matching all criteria the server has seen."""
        view: Any = self.emu
        for criterion in criteria:
            view = view[criterion]
        return len(view)

    # -- what the Job controller and the kubelet would write -------------------

    def can_log(self, pod: str, text: str) -> None:
        """Serve `text` as the pod's log (kmock serves logs only as canned responses)."""
        self.react(lambda emu: emu[f"get /api/v1/namespaces/{self.namespace}/pods/{pod}/log"]
                   << text.encode() << {"Content-Type": "text/plain"})

    def create_pod(self, pod: dict[str, Any]) -> None:
        self.core.create_namespaced_pod(self.namespace, pod)

    def set_pod(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})

    def set_job(self, name: str, **status: Any) -> None:
        self.batch.patch_namespaced_job_status(name, self.namespace, {"status": status})

    def finish_job(self, name: str, kind: str, reason: str = "", message: str = "",
                   **status: Any) -> None:
        """Write a terminal Job status as the Job controller does (Complete or Failed)."""
        conditions = [job_condition(kind, reason, message)]
        if kind == "Failed":
            conditions.insert(0, job_condition("FailureTarget", reason, message))
        counts = {"succeeded": 1} if kind == "Complete" else {"failed": 1}
        self.set_job(name, active=None, ready=None, conditions=conditions,
                     **{**counts, **status})

    def create_secret(self, name: str, values: dict[str, str]) -> None:
        """A Secret as `kubectl create secret generic` stores it (base64 data)."""
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        self.core.create_namespaced_secret(self.namespace, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": self.namespace}, "data": data})

    def job_exists(self, name: str) -> bool:
        try:
            self.batch.read_namespaced_job(name, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


@dataclass(frozen=True)
class PodRun:
    """One pod the kubelet ran: its Job, completion index, name and exit code."""

    job: str
    index: int | None
    pod: str
    exit_code: int | None = None


def job_condition(kind: str, reason: str = "", message: str = "",
                  status: str = "True") -> dict[str, Any]:
    stamp = now()
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastProbeTime": stamp, "lastTransitionTime": stamp}


class PodmanKubelet:
    """Runs the pod of every Job created in a Cluster with `podman kube play --network host`.

    One pod per Job (per completion index of an Indexed Job, all at once),
    retried after a failure up to `backoffLimit` (`backoffLimitPerIndex`, the
    failed index alone); the containers' exits decide the Job (all 0:
    Complete; exit 2 fails at once, as the FailJob/FailIndex rule would: Failed
    by PodFailurePolicy; else Failed by BackoffLimitExceeded, or FailedIndexes
    for an Indexed Job). Like a kubelet, it
    resolves `envFrom: secretRef` from the Secrets stored in the API server
    and reports `terminated.reason: OOMKilled` for a container killed at its
    memory limit. Like the Job controller it stops a pod that outlives the
    Job's `activeDeadlineSeconds` (Job Failed, reason DeadlineExceeded), and
    like the garbage collector it stops and deletes the pod of a deleted Job.
    """

    def __init__(self, cluster: Cluster, workdir: Path,
                 podman_env: dict[str, str] | None = None, grace_seconds: int = 2) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.podman_env = podman_env
        # A kubelet waits terminationGracePeriodSeconds (30 s unless the pod
        # says otherwise) between SIGTERM and SIGKILL; tests need less.
        self.grace_seconds = grace_seconds
        self.jobs: list[str] = []
        self.pods: dict[str, list[str]] = {}  # job name -> its pods' names, oldest first
        self.runs: list[PodRun] = []  # every pod run, in the order started
        self.images: list[str] = []
        self.errors: list[BaseException] = []
        self._stopped = threading.Event()
        self._watch = watch.Watch()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._watch_jobs, daemon=True)

    def start(self) -> PodmanKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        while self._thread.is_alive():
            self._watch.stop()
            self._thread.join(timeout=0.1)
        for thread in self._threads:
            thread.join(timeout=60)

    def _watch_jobs(self) -> None:
        ns = self.cluster.namespace
        while not self._stopped.is_set():
            try:
                for event in self._watch.stream(
                        lambda **kw: self.cluster.batch.list_namespaced_job(ns, **kw),
                        timeout_seconds=5, _request_timeout=(5, 5)):
                    job = event["raw_object"]
                    name = job["metadata"]["name"]
                    if event["type"] == "ADDED" and name not in self.jobs:
                        self.jobs.append(name)
                        thread = threading.Thread(target=self._run_job, args=(job,), daemon=True)
                        self._threads.append(thread)
                        thread.start()
            except Exception as exc:
                if not self._stopped.is_set() and "timed out" not in str(exc):
                    self.errors.append(exc)
                    time.sleep(0.2)

    def _podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # From the kubelet's own folder: on cgroup v1, conmon drops an `oom`
        # marker file into its caller's working directory.
        return subprocess.run(["podman", *args], capture_output=True, text=True,
                              env=self.podman_env, check=check, timeout=600, cwd=self.workdir)

    def _run_job(self, job: dict[str, Any]) -> None:
        try:
            self._control(job)
        except BaseException as exc:
            self.errors.append(exc)

    def pod_of(self, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """The Pod the Job controller would create from the Job's template (for one
        completion index of an Indexed Job)."""
        name = job["metadata"]["name"]
        template = copy.deepcopy(job["spec"]["template"])
        spec = template["spec"]
        labels = {**(template.get("metadata") or {}).get("labels", {}),
                  "batch.kubernetes.io/job-name": name, "job-name": name}
        annotations = dict((template.get("metadata") or {}).get("annotations", {}))
        pod_name = f"{name[:56]}-{secrets.token_hex(2)}"
        if index is not None:
            # The controller labels and annotates the index, and hands it to the
            # containers as JOB_COMPLETION_INDEX (a downward-API fieldRef to the
            # annotation; a plain value here, which podman understands).
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            pod_name = f"{name[:52]}-{index}-{secrets.token_hex(2)}"
            for container in spec["containers"]:
                container["env"] = [*container.get("env", []),
                                    {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name,
                             "namespace": self.cluster.namespace, "labels": labels,
                             "annotations": annotations,
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                  "name": name, "uid": name,
                                                  "controller": True}]},
                "spec": spec}

    def _control(self, job: dict[str, Any]) -> None:
        """Play the Job controller: run its pods (one per index), retry failed ones
        within the backoff limit, and write the Job's end."""
        name = job["metadata"]["name"]
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        indexes: list[int | None] = list(range(spec.get("completions", 1))) if indexed \
            else [None]
        # Failures allowed before an index (Indexed, backoffLimitPerIndex) or the
        # Job (backoffLimit) fails; exit 2 matches the FailIndex/FailJob rule.
        limit = spec.get("backoffLimitPerIndex" if indexed else "backoffLimit", 6)
        self.cluster.set_job(name, active=len(indexes), startTime=now())
        # activeDeadlineSeconds counts from the Job's startTime, pulls included.
        seconds = spec.get("activeDeadlineSeconds")
        deadline = time.monotonic() + seconds if seconds else None
        ends: dict[int | None, tuple[str, int]] = {}

        def run_index(index: int | None) -> None:
            failures = 0
            while True:
                ended, code = self._run_pod_of(job, index, deadline)
                if ended != "exited" or code in (0, 2):
                    break
                failures += 1
                if failures > limit:
                    break
            ends[index] = (ended, code)

        threads = [threading.Thread(target=self._guard, args=(run_index, i), daemon=True)
                   for i in indexes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(ends) < len(indexes) or any(e in ("deleted", "pull") for e, _ in ends.values()):
            return  # deleted, or left pending with an image it cannot pull
        if any(e == "deadline" for e, _ in ends.values()):
            self.cluster.finish_job(name, "Failed", "DeadlineExceeded",
                                    "Job was active longer than specified deadline")
            return
        failed = sorted(i for i, (_, code) in ends.items() if code != 0 and i is not None)
        codes = [code for _, code in ends.values()]
        if all(code == 0 for code in codes):
            extra = {"completedIndexes": f"0-{len(indexes) - 1}"} if indexed else {}
            self.cluster.finish_job(name, "Complete", succeeded=len(indexes), **extra)
        elif indexed:
            self.cluster.finish_job(name, "Failed", "FailedIndexes", "Job has failed indexes",
                                    failedIndexes=",".join(map(str, failed)))
        elif codes[0] == 2:
            self.cluster.finish_job(name, "Failed", "PodFailurePolicy",
                                    f"Container {CONTAINER} for pod {self.pods[name][-1]} "
                                    "failed with exit code 2 matching FailJob rule at index 0")
        else:
            self.cluster.finish_job(name, "Failed", "BackoffLimitExceeded",
                                    "Job has reached the specified backoff limit")

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            self.errors.append(exc)

    def _run_pod_of(self, job: dict[str, Any], index: int | None, deadline: float | None
                    ) -> tuple[str, int]:
        """Run one pod of the Job to its end: how it ended ("exited", "deadline",
        "deleted", "pull") and its exit code."""
        name = job["metadata"]["name"]
        pod = self.pod_of(job, index)
        pod_name = pod["metadata"]["name"]
        self.pods.setdefault(name, []).append(pod_name)
        self.runs.append(PodRun(name, index, pod_name))
        container = pod["spec"]["containers"][0]["name"]
        self.cluster.create_pod(pod)
        self.cluster.set_pod(pod_name, {"phase": "Pending", "startTime": now()})
        manifest = self.workdir / f"{pod_name}.yaml"
        # podman wants the Pod without the API server's bookkeeping fields,
        # and Secrets resolved into plain env, as a kubelet hands them over.
        play = {**pod, "metadata": {"name": pod_name, "labels": pod["metadata"]["labels"]},
                "spec": _own_empty_dirs(self._resolve_secrets(pod["spec"]), pod_name)}
        self.images.extend(c["image"] for c in pod["spec"]["containers"])
        manifest.write_text(yaml.safe_dump(play))
        started = self._podman("kube", "play", "--network", "host", str(manifest), check=False)
        if started.returncode != 0:
            self.cluster.set_pod(pod_name, {"phase": "Pending", "containerStatuses": [
                {"name": container, "ready": False, "restartCount": 0, "image": "",
                 "imageID": "", "state": {"waiting": {"reason": "ErrImagePull",
                                                      "message": started.stderr.strip()}}}]})
            return "pull", -1
        ended = "exited"
        oom = False
        try:
            # The Job first: once a watcher sees the pod running, it may delete
            # the Job at any moment (cancel), and the pod is ours until we delete it.
            self.cluster.set_job(name, ready=1)
            self.cluster.set_pod(pod_name, {"phase": "Running", "containerStatuses": [
                {"name": container, "ready": True, "restartCount": 0, "image": "",
                 "imageID": "", "state": {"running": {"startedAt": now()}}}]})
            ctr = f"{pod_name}-{container}"
            ended, code = self._await_container(name, ctr, deadline)
            if ended == "exited":
                oom = self._oom_killed(ctr, code, pod["spec"]["containers"][0])
            logs = self._podman("logs", ctr)
            # The log must be there before the status says the pod is done.
            self.cluster.can_log(pod_name, logs.stdout + logs.stderr)
        finally:
            self._podman("kube", "down", str(manifest), check=False)
        self.runs[self.runs.index(PodRun(name, index, pod_name))] = PodRun(
            name, index, pod_name, code)
        if ended == "deleted":
            # The garbage collector removes the pods of a deleted Job.
            self._delete_pod(pod_name)
        else:
            self._finish_pod(pod_name, container, code, oom=oom, failed=ended != "exited")
        return ended, code

    def _await_container(self, job: str, ctr: str, deadline: float | None
                         ) -> tuple[str, int]:
        """Wait for the container to exit ("exited"), or stop it when the Job passes its
        deadline ("deadline") or is deleted ("deleted"); returns how, and the exit code."""
        waiter = subprocess.Popen(["podman", "wait", ctr], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=self.podman_env,
                                  cwd=self.workdir)
        ended = "exited"
        try:
            while True:
                try:
                    waiter.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if ended != "exited":
                    continue  # stopped; the wait returns once the container is down
                if deadline is not None and time.monotonic() >= deadline:
                    ended = "deadline"
                elif not self.cluster.job_exists(job):
                    ended = "deleted"
                else:
                    continue
                # SIGTERM, then SIGKILL after the grace period, as the kubelet does.
                self._podman("stop", "--time", str(self.grace_seconds), ctr, check=False)
        finally:
            if waiter.poll() is None:
                waiter.kill()
            out = waiter.communicate()[0]
        try:
            code = int(out.strip())
        except ValueError:
            code = int(self._podman("inspect", "--format", "{{.State.ExitCode}}",
                                    ctr).stdout.strip())
        return ended, code

    def _oom_killed(self, ctr: str, code: int, container: dict[str, Any]) -> bool:
        """Whether the container was killed at its memory limit, as the kubelet reports it.

        podman says so in State.OOMKilled where it can see it (cgroup v2). On
        cgroup v1 (this build machine) conmon often cannot, and the state says
        false; then a SIGKILL exit (137) of a container that had a memory limit,
        which this kubelet did not stop itself, is taken as the kernel's OOM
        kill. That is a guess a real kubelet does not need to make: a SIGKILL
        from someone else would be reported as OOMKilled too.
        """
        inspected = self._podman("inspect", "--format", "{{.State.OOMKilled}}", ctr,
                                 check=False).stdout.strip()
        if inspected == "true":
            return True
        limited = bool(((container.get("resources") or {}).get("limits") or {}).get("memory"))
        return code == 137 and limited

    def _delete_pod(self, pod: str) -> None:
        try:
            self.cluster.core.delete_namespaced_pod(pod, self.cluster.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def _resolve_secrets(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        for container in spec["containers"]:
            values: list[dict[str, Any]] = []
            for source in container.pop("envFrom", []):
                name = source["secretRef"]["name"]
                secret = self.cluster.core.read_namespaced_secret(
                    name, self.cluster.namespace, _preload_content=False).json()
                data = {k: base64.b64decode(v).decode() for k, v in
                        (secret.get("data") or {}).items()}
                values += [{"name": k, "value": v} for k, v in sorted(data.items())]
            container["env"] = [*values, *container.get("env", [])]  # explicit env wins
        return spec

    def _finish_pod(self, pod: str, container: str, code: int, oom: bool = False,
                    failed: bool = False) -> None:
        reason = "OOMKilled" if oom else "Completed" if code == 0 else "Error"
        state = {"terminated": {"exitCode": code, "reason": reason,
                                "startedAt": now(), "finishedAt": now()}}
        self.cluster.set_pod(pod, {"phase": "Succeeded" if code == 0 and not failed
                                   else "Failed",
                                   "containerStatuses": [{"name": container, "ready": False,
                                                          "restartCount": 0, "image": "",
                                                          "imageID": "", "state": state}]})
