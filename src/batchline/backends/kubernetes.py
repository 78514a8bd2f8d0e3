"""Kubernetes backend: each stage attempt runs as one batch/v1 Job.

The manifest comes from the pure builder in `kubernetes_job.py`; this module
only talks to the API server: it creates the Job (adopting an identical one
left by an earlier launcher), watches the Job and its pods until they reach an
end state, copies the pods' logs into storage (pods vanish with the Job's
TTL), and translates what it saw into one StageResult.

What Job and pod states mean is decided by the pure translators in
`kubernetes_status.py`. The official `kubernetes` client is an optional
extra, imported only when a backend is built.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

from pydantic import Field

from batchline.backends.base import Backend, BackendOptions, Handle, Outcome, Phase
from batchline.backends.kubernetes_job import (
    ANNOTATION_CACHE_KEY,
    ANNOTATION_TASK_URI,
    DNS_LABEL,
)
from batchline.backends.kubernetes_status import (
    COMPLETION_INDEX_ANNOTATION,
    COMPLETION_INDEX_LABEL,
    cause_from_k8s,
    is_pod_of,
    name_of,
    phase_from_k8s,
    pod_started,
)
from batchline.causes import Cause
from batchline.errors import BackendError
from batchline.task import StageTask

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
INSTALL_HINT = ("the kubernetes backend needs the kubernetes client: "
                "pip install 'batchline[kubernetes]'")


_SDK: dict[str, ModuleType] = {}


def _sdk() -> ModuleType:
    """The `kubernetes` package, imported on first use with a clear hint if missing."""
    if "kubernetes" not in _SDK:
        try:
            import kubernetes
            import kubernetes.client
            import kubernetes.config
            import kubernetes.watch
        except ImportError as exc:
            raise BackendError(INSTALL_HINT) from exc
        _SDK["kubernetes"] = kubernetes
    return _SDK["kubernetes"]


def api_client_from_config(context: str | None = None, in_cluster: bool = False,
                           kubeconfig: str | None = None) -> Any:
    """An ApiClient from the pod's service account, or from a kubeconfig context.

    `kubeconfig` names the file; by default the client's own lookup applies
    ($KUBECONFIG, then ~/.kube/config).
    """
    k8s = _sdk()
    configuration = k8s.client.Configuration()
    try:
        if in_cluster:
            k8s.config.load_incluster_config(client_configuration=configuration)
        else:
            k8s.config.load_kube_config(config_file=kubeconfig, context=context,
                                        client_configuration=configuration)
    except k8s.config.ConfigException as exc:
        where = "the pod's service account" if in_cluster else \
            f"kubeconfig context {context!r}" if context else "the current kubeconfig context"
        raise BackendError(f"cannot configure the Kubernetes client from {where}: {exc}; "
                           "pass --context NAME, or --in-cluster inside a pod") from exc
    # Only the server is logged: tokens and certificates stay out of logs.
    log.info("kubernetes: API server %s", configuration.host)
    return k8s.client.ApiClient(configuration)


@dataclasses.dataclass(frozen=True)
class Retry:
    """Bounded exponential backoff for throttled (429) and server-side (5xx) errors."""

    attempts: int = 6
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * self.factor, self.maximum)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Call `fn`, retrying transient API errors; the last error propagates unchanged."""
        for delay in self.delays():
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("kubernetes: %s failed (%s); retrying in %.1fs", what,
                            _describe(exc), delay)
                time.sleep(_retry_after(exc) or delay)
        return fn()


def is_transient(exc: BaseException) -> bool:
    """Throttling, server errors and dropped connections are worth another try."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return status in TRANSIENT_STATUSES
    import urllib3.exceptions

    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError)


def _retry_after(exc: BaseException) -> float:
    headers = getattr(exc, "headers", None) or {}
    try:
        return min(float(headers.get("Retry-After", 0)), 60.0)
    except (TypeError, ValueError):
        return 0.0


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    return f"HTTP {status} {reason}" if status else type(exc).__name__


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _raw(response: Any) -> Any:
    """Decode a `_preload_content=False` response: API objects as the server sent them."""
    return json.loads(response.data)


class _Watcher:
    """Lists, then watches, one kind of object; puts (kind, type, object) on a queue.

    Resumes from the last resourceVersion after a watch ends; re-lists after
    410 Gone. The read timeout bounds each watch even where the server ignores
    timeoutSeconds. Failures that outlast the retry budget are put on the
    queue as ("<kind>", "ERROR", exception) for the waiting thread to raise.
    """

    def __init__(self, kind: str, list_fn: Callable[..., Any], out: queue.Queue[Any],
                 retry: Retry, watch_seconds: int) -> None:
        self.kind = kind
        self._list = list_fn
        self._out = out
        self._retry = retry
        self._watch_seconds = watch_seconds
        self._stopped = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"batchline-watch-{kind}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            # Watch.stop() only reaches a stream that has started (and a new
            # stream resets its flag), so keep poking until the thread is out.
            if self._watch is not None:
                self._watch.stop()
            self._thread.join(timeout=0.05)

    def _run(self) -> None:
        try:
            version: str | None = None
            while not self._stopped.is_set():
                if version is None:
                    data = self._retry.call(lambda: _raw(self._list(_preload_content=False)),
                                            f"list {self.kind}s")
                    self._out.put((self.kind, "SYNC", data.get("items") or []))
                    version = (data.get("metadata") or {}).get("resourceVersion") or ""
                version = self._watch_from(version)
        except Exception as exc:
            self._out.put((self.kind, "ERROR", exc))

    def _watch_from(self, version: str) -> str | None:
        """Stream events from `version`; returns where to resume, or None to re-list."""
        k8s = _sdk()
        failures = 0
        self._watch = watch = k8s.watch.Watch()
        while not self._stopped.is_set():
            try:
                # A lambda, not the typed API method: Watch then yields the
                # objects as plain dicts instead of deserialising them.
                for event in watch.stream(lambda **kw: self._list(**kw),
                                          resource_version=version,
                                          timeout_seconds=self._watch_seconds,
                                          _request_timeout=(10, self._watch_seconds + 5)):
                    failures = 0
                    obj = event.get("raw_object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        self._out.put((self.kind, event.get("type"), obj))
                    if self._stopped.is_set():
                        break
                return version
            except Exception as exc:
                if self._stopped.is_set():
                    return version
                if _status(exc) == 410:
                    log.info("kubernetes: watch of %ss expired (410 Gone); listing again",
                             self.kind)
                    return None
                if _is_read_timeout(exc):
                    return version
                failures += 1
                if not is_transient(exc) or failures >= self._retry.attempts:
                    raise
                delay = min(self._retry.initial * self._retry.factor ** (failures - 1),
                            self._retry.maximum)
                log.warning("kubernetes: watch of %ss failed (%s); retrying in %.1fs",
                            self.kind, _describe(exc), delay)
                self._stopped.wait(_retry_after(exc) or delay)
        return version


def _is_read_timeout(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(exc, urllib3.exceptions.ReadTimeoutError) or (
        isinstance(exc, urllib3.exceptions.ProtocolError) and "timed out" in str(exc))


# Plain settings a stage pod needs to find storage; credentials are never
# copied (in a cluster they come from IRSA or the Secret named by `secret`).
POD_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def _pod_env() -> dict[str, str]:
    return {k: os.environ[k] for k in POD_ENV if k in os.environ}


class Options(BackendOptions):
    namespace: str = Field("batchline", pattern=DNS_LABEL)
    service_account: str = Field("batchline-stage", pattern=DNS_LABEL)
    ttl_seconds_after_finished: int = Field(3600, ge=0)
    context: str | None = Field(None, description="kubeconfig context")
    in_cluster: bool = Field(False, description="use the pod's service account")
    kubeconfig: str | None = None
    secret: str | None = Field(None, pattern=DNS_LABEL, description="Secret with storage "
                               "credentials for stage pods (envFrom)")
    env: dict[str, str] = Field(default_factory=_pod_env)
    # The launcher retries by cause with a new Job per attempt, so the Job
    # controller itself does not retry.
    backoff_limit: int = Field(0, ge=0, le=100)
    # ... except for the shards of an Indexed Job: Kubernetes retries a failed
    # index alone (backoffLimitPerIndex), which the launcher could only do by
    # rerunning every shard.
    shard_retries: int = Field(2, ge=0, le=100)
    poll_seconds: float = Field(1.0, gt=0, le=60)
    watch_seconds: int = Field(60, ge=1, le=3600)
    unschedulable_grace_seconds: float = Field(120.0, ge=0)


@dataclasses.dataclass
class _Seen:
    """What the waiting thread knows so far about one Job and its pods."""

    job: dict[str, Any] | None = None
    job_synced: bool = False
    pods_synced: bool = False
    pods: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class KubernetesHandle(Handle):
    job: str = ""
    namespace: str = ""
    events: queue.Queue[Any] = dataclasses.field(default_factory=queue.Queue)
    watchers: list[_Watcher] = dataclasses.field(default_factory=list)
    seen: _Seen = dataclasses.field(default_factory=_Seen)


class KubernetesBackend(Backend[KubernetesHandle]):
    """Runs each stage attempt as a Kubernetes Job and watches it to the end."""

    name = "kubernetes"
    # A sharded task is one Indexed Job (see kubernetes_job.job_manifest):
    # Kubernetes runs and retries the shards, each pod's log goes to its shard.
    fans_out_shards = True
    adopts_by_name = True  # a Job's name is unique: a 409 finds the running one
    # The Job's activeDeadlineSeconds normally ends it; this is the safety net.
    deadline_slack_seconds = 60.0

    def __init__(self, options: Options | None = None, *, api_client: Any = None,
                 retry: Retry | None = None, **fields: Any) -> None:
        k8s = _sdk()
        self.options = options or Options(**fields)
        self.namespace = self.options.namespace
        self.poll_seconds = self.options.poll_seconds
        self.retry = retry or Retry()
        # An explicit client (tests, embedding) wins over any configuration.
        self.api_client = api_client or api_client_from_config(
            self.options.context, self.options.in_cluster, self.options.kubeconfig)
        self._batch = k8s.client.BatchV1Api(self.api_client)
        self._core = k8s.client.CoreV1Api(self.api_client)

    # -- start ----------------------------------------------------------------

    def start(self, task: StageTask) -> KubernetesHandle:
        """Create the task's Job (adopting one built from the very same task), then watch."""
        from batchline.backends.kubernetes_job import job_manifest

        opts = self.options
        manifest = job_manifest(task, namespace=self.namespace,
                                service_account=opts.service_account,
                                ttl_seconds_after_finished=opts.ttl_seconds_after_finished,
                                backoff_limit=opts.shard_retries if task.shard_count > 1
                                else opts.backoff_limit, env=opts.env or None,
                                env_from_secret=opts.secret)
        name = manifest["metadata"]["name"]
        ref = f"{self.namespace}/{name}"
        try:
            self.retry.call(lambda: self._batch.create_namespaced_job(
                self.namespace, manifest, _preload_content=False), f"create job {ref}")
            log.info("stage %s: submitted to kubernetes as job %s", task.stage, ref)
        except Exception as exc:
            if _status(exc) != 409:
                raise BackendError(f"cannot create job {ref}: {_describe(exc)} "
                                   f"{getattr(exc, 'body', '') or exc}") from exc
            self._adopt(task, manifest, ref)
        handle = KubernetesHandle(task, ref, job=name, namespace=self.namespace)
        handle.watchers = [
            _Watcher("job", lambda **kw: self._batch.list_namespaced_job(
                self.namespace, field_selector=f"metadata.name={name}", **kw),
                handle.events, self.retry, opts.watch_seconds),
            _Watcher("pod", lambda **kw: self._core.list_namespaced_pod(
                self.namespace, label_selector=f"job-name={name}", **kw),
                handle.events, self.retry, opts.watch_seconds),
        ]
        for watcher in handle.watchers:
            watcher.start()
        return handle

    def _adopt(self, task: StageTask, manifest: dict[str, Any], ref: str) -> None:
        # 409: a Job of that name exists, e.g. from a launcher that died after
        # submitting, or from a create whose response got lost. Same task and
        # cache key means same work: watch it instead of failing.
        name = manifest["metadata"]["name"]
        existing = self._read_job(name)
        if existing is None:
            raise BackendError(f"job {ref} conflicted on create but is gone now; resume the run")
        want = manifest["metadata"].get("annotations") or {}
        have = (existing.get("metadata") or {}).get("annotations") or {}
        diffs = [f"{key}: existing {have.get(key)!r}, this task {want.get(key)!r}"
                 for key in (ANNOTATION_TASK_URI, ANNOTATION_CACHE_KEY)
                 if have.get(key) != want.get(key)]
        if diffs:
            raise BackendError(f"job {ref} already exists for a different task "
                               f"({'; '.join(diffs)}); delete it (kubectl delete job -n "
                               f"{self.namespace} {name}) or resume the run")
        log.info("stage %s: adopted existing kubernetes job %s (same task and cache key)",
                 task.stage, ref)

    def _read_job(self, name: str) -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = self.retry.call(lambda: _raw(self._batch.read_namespaced_job(
                name, self.namespace, _preload_content=False)), f"read job {name}")
            return job
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise BackendError(f"cannot read job {self.namespace}/{name}: {_describe(exc)}") \
                from exc

    # -- poll -----------------------------------------------------------------

    def poll(self, handle: KubernetesHandle, timeout: float) -> Outcome | Phase:
        """Apply what the watches saw (waiting up to `timeout`), then judge the Job."""
        seen = handle.seen
        try:
            self._apply(seen, handle.events.get(timeout=max(timeout, 0.01)), handle.job)
            while not handle.events.empty():  # take a burst in one go
                self._apply(seen, handle.events.get_nowait(), handle.job)
        except queue.Empty:
            pass
        if not (seen.job_synced and seen.pods_synced):
            return "pending"
        if seen.job is None or handle.cancelled or handle.timed_out:
            # Deleted (by us: cancel or the deadline's safety net, or by someone
            # else): nothing more will happen to it.
            return Outcome(cause=Cause.CANCELLED, message=f"job {handle.ref} was deleted")
        pods = sorted(seen.pods.values(), key=pod_started)
        grace = self.options.unschedulable_grace_seconds
        result = cause_from_k8s(seen.job, pods, stage=handle.task.stage,
                                unschedulable_grace=grace)
        if result is not None and not result.ok:
            # The two watches are not ordered with each other: the Job's
            # Failed may overtake its pod's last update. Read the pods now.
            fresh = {name_of(p): p for p in self._pods_of(handle.job)}
            pods = sorted({**seen.pods, **fresh}.values(), key=pod_started)
            result = cause_from_k8s(seen.job, pods, stage=handle.task.stage,
                                    unschedulable_grace=grace)
        if result is None:
            phase: Phase = "running" if phase_from_k8s(seen.job, pods) == "running" \
                else "pending"
            return phase
        oom = result.cause is Cause.OUT_OF_MEMORY
        return Outcome(result.exit_code, oom_killed=oom,
                       cause=None if result.cause in (Cause.SUCCEEDED, Cause.BAD_INPUT,
                                                      Cause.USER_ERROR) or oom
                       else result.cause, message=result.message)

    def _apply(self, seen: _Seen, item: tuple[str, str, Any], name: str) -> None:
        kind, kind_of_event, payload = item
        if kind_of_event == "ERROR":
            raise BackendError(f"cannot watch the {kind}s of job {self.namespace}/{name}: "
                               f"{_describe(payload)}; check the API server and RBAC "
                               "(list/watch on jobs and pods)") from payload
        if kind == "job":
            if kind_of_event == "SYNC":
                seen.job = next((j for j in payload if name_of(j) == name), None)
                seen.job_synced = True
            elif name_of(payload) == name:
                seen.job = None if kind_of_event == "DELETED" else payload
            return
        if kind_of_event == "SYNC":
            seen.pods = {name_of(p): p for p in payload if is_pod_of(p, name)}
            seen.pods_synced = True
        elif is_pod_of(payload, name):
            if kind_of_event == "DELETED":
                # Keep the last state: a deleted failed pod still explains the failure.
                seen.pods.setdefault(name_of(payload), payload)
            else:
                seen.pods[name_of(payload)] = payload

    # -- logs -----------------------------------------------------------------

    def fetch_logs(self, handle: KubernetesHandle) -> dict[int | None, str]:
        """Each pod's log by shard while the pods exist (they go with the Job's TTL)."""
        pods = self._pods_of(handle.job)
        out: dict[int | None, str] = {}
        for pod in pods:
            shard = _completion_index(pod) if handle.task.shard_count > 1 else None
            text = self._pod_log(name_of(pod))
            if len(pods) > 1:  # retried pods: say which attempt each part comes from
                text = f"--- pod {name_of(pod)} ---\n{text}"
            out[shard] = out.get(shard, "") + text
        return out

    def _pods_of(self, name: str) -> list[dict[str, Any]]:
        try:
            data = self.retry.call(lambda: _raw(self._core.list_namespaced_pod(
                self.namespace, label_selector=f"job-name={name}", _preload_content=False)),
                f"list pods of job {name}")
        except Exception as exc:
            raise BackendError(f"cannot list the pods of job {self.namespace}/{name}: "
                               f"{_describe(exc)}") from exc
        return sorted((p for p in data.get("items") or [] if is_pod_of(p, name)),
                      key=pod_started)

    def _pod_log(self, pod: str) -> str:
        try:
            response = self.retry.call(lambda: self._core.read_namespaced_pod_log(
                pod, self.namespace, _preload_content=False), f"read log of pod {pod}")
        except Exception as exc:
            if _status(exc) in (400, 404):  # never started (image pull) or already gone
                return ""
            raise BackendError(f"cannot read the log of pod {self.namespace}/{pod}: "
                               f"{_describe(exc)}") from exc
        # Raw bytes: the client would json-decode a log that happens to be JSON.
        return bytes(response.data).decode("utf-8", errors="replace")

    # -- stop and release -----------------------------------------------------

    def stop(self, handle: KubernetesHandle) -> None:
        """Delete the Job and, in the background, its pods; safe to call twice."""
        try:
            self.retry.call(lambda: self._batch.delete_namespaced_job(
                handle.job, self.namespace, propagation_policy="Background",
                _preload_content=False), f"delete job {handle.ref}")
            log.info("stage %s: deleted kubernetes job %s", handle.task.stage, handle.ref)
        except Exception as exc:
            if _status(exc) == 404:
                return
            raise BackendError(f"cannot delete job {handle.ref}: {_describe(exc)}") from exc

    def release(self, handle: KubernetesHandle, outcome: Outcome) -> None:
        self.let_go(handle)
        if outcome.cause in (Cause.IMAGE_PULL, Cause.UNSCHEDULABLE):
            # Kubernetes would keep retrying forever; the launcher decides instead.
            self.stop(handle)

    def let_go(self, handle: KubernetesHandle) -> None:
        for watcher in handle.watchers:
            watcher.stop()


BACKEND = KubernetesBackend


def _completion_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(COMPLETION_INDEX_LABEL) or \
        (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None else None
