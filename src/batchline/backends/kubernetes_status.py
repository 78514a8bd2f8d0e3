"""Pure translators for the kubernetes backend: API objects in, phase or StageResult out.

Jobs and pods are plain dicts shaped as the API server sends them (camelCase),
so these functions need neither a client nor a server to be tested. The API
conventions say to assume an open world: a value this module does not know (a
new Job condition type, pod phase or failure reason, from a newer cluster) is
logged with its raw text and otherwise ignored, so the wait goes on and a
cluster upgrade never crashes a run.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from batchline.causes import Cause
from batchline.task import StageResult

log = logging.getLogger(__name__)

# The Job controller labels its pods with both (the short one since forever,
# the prefixed one since 1.27); we accept either when filtering client-side.
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

JOB_CONDITION_TYPES = ("Complete", "Failed", "Suspended", "FailureTarget", "SuccessCriteriaMet")
JOB_FAILED_REASONS = ("BackoffLimitExceeded", "DeadlineExceeded", "PodFailurePolicy",
                      "MaxFailedIndexesExceeded", "FailedIndexes")
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
# Pod-level reasons that mean "the platform took the pod away", not "the code failed".
DISRUPTION_REASONS = frozenset({"Evicted", "Preempted", "Preempting", "NodeShutdown"})


_REPORTED: set[tuple[str, str]] = set()


def unknown(value: str, known: tuple[str, ...], what: str) -> bool:
    """Whether `value` is new to this batchline; logs it once, with the known ones."""
    if value in known:
        return False
    if (what, value) not in _REPORTED:
        _REPORTED.add((what, value))
        log.warning("kubernetes: unknown %s %r (known: %s); ignoring it and waiting on",
                    what, value, ", ".join(known))
    return True


def job_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Job's known conditions whose status is "True", by type."""
    out = {}
    for cond in (job.get("status") or {}).get("conditions") or []:
        kind = str(cond.get("type", ""))
        if not unknown(kind, JOB_CONDITION_TYPES, "Job condition type") and \
                str(cond.get("status")) == "True":
            out[kind] = cond
    return out


def pod_phase(pod: dict[str, Any]) -> str:
    """A pod's phase ("Pending" when not reported yet; "Unknown" when new to us)."""
    phase = str((pod.get("status") or {}).get("phase") or "Pending")
    return "Unknown" if unknown(phase, POD_PHASES, "pod phase") else phase


def phase_from_k8s(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """The coarse phase shown to people while a Job is active: "pending" or "running"."""
    phases = {pod_phase(p) for p in pods}
    if "Running" in phases:
        return "running"
    if not pods or "Pending" in phases:
        return "running" if (job.get("status") or {}).get("ready") else "pending"
    # Only finished pods: the Job controller is about to decide (or retry).
    # Staying "running" keeps the phase from flickering at every ending.
    return "running"


def cause_from_k8s(job: dict[str, Any], pods: list[dict[str, Any]], *, stage: str | None = None,
                   now: datetime | None = None,
                   unschedulable_grace: float = 0.0) -> StageResult | None:
    """Translate a Job and its pods into a StageResult, or None while it should be waited on.

    Terminal Job conditions decide first (Complete, Failed with its reason);
    the pods explain a failure (OOMKilled, eviction, exit code). Two states
    never end a Job by themselves, so they are read off the pods while the Job
    is still active: image pull failures at once, and an Unschedulable pod once
    it has been so for `unschedulable_grace` seconds (autoscalers need a while).
    """
    stage = stage or _stage_of(job)
    ref = _job_ref(job)
    conditions = job_conditions(job)
    if "Complete" in conditions:
        return StageResult(stage, Cause.SUCCEEDED, 0, backend_ref=ref)
    if "Failed" in conditions:
        return _failed_result(stage, ref, conditions["Failed"], pods)
    return _active_result(stage, ref, pods, now or datetime.now(UTC), unschedulable_grace)


def _failed_result(stage: str, ref: str, failed: dict[str, Any],
                   pods: list[dict[str, Any]]) -> StageResult:
    reason = str(failed.get("reason") or "")
    message = str(failed.get("message") or "")
    if reason and unknown(reason, JOB_FAILED_REASONS, "Job failure reason"):
        message = f"{reason}: {message}".rstrip(": ")
    if reason == "DeadlineExceeded":
        return StageResult(stage, Cause.DEADLINE, None, message, backend_ref=ref)
    pod = _last_failed_pod(pods)
    if pod is not None and _disruption(pod):
        return StageResult(stage, Cause.EVICTED, None, _disruption(pod), backend_ref=ref)
    terminated = _terminated_state(pod) if pod is not None else {}
    code = terminated.get("exitCode")
    if code is None:
        code = _exit_code_in(message)
    if terminated.get("reason") == "OOMKilled":
        return StageResult(stage, Cause.OUT_OF_MEMORY, code if code is not None else 137,
                           f"container was OOMKilled in pod {name_of(pod or {})}", backend_ref=ref)
    # The one exit-code table: exit 2 is bad input on every backend (a
    # podFailurePolicy FailJob rule makes it fail fast, but without one the Job
    # still ends with BackoffLimitExceeded and the cause is the same); the
    # kubelet says OOMKilled when it was memory, so 137 alone is not.
    cause = Cause.from_exit(code, oom_killed=False)
    if cause is Cause.SUCCEEDED:  # a Failed Job whose last pod exited 0 (e.g. deadline race)
        cause = Cause.USER_ERROR
    detail = message or str(terminated.get("message") or "")
    return StageResult(stage, cause, code, detail, backend_ref=ref)


def _active_result(stage: str, ref: str, pods: list[dict[str, Any]], now: datetime,
                   grace: float) -> StageResult | None:
    for pod in pods:
        if pod_phase(pod) in ("Succeeded", "Failed"):
            continue
        for status in _container_statuses(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                text = f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
                return StageResult(stage, Cause.IMAGE_PULL, None, text, backend_ref=ref)
        cond = _condition(pod, "PodScheduled")
        if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            since = _timestamp(cond.get("lastTransitionTime")) or now
            if (now - since).total_seconds() >= grace:
                return StageResult(stage, Cause.UNSCHEDULABLE, None, str(cond.get("message", "")),
                                   backend_ref=ref)
    return None


def _stage_of(job: dict[str, Any]) -> str:
    labels = (job.get("metadata") or {}).get("labels") or {}
    return str(labels.get("batchline.dev/stage") or name_of(job))


def name_of(obj: dict[str, Any]) -> str:
    """An object's metadata.name ("" if it has none)."""
    return str((obj.get("metadata") or {}).get("name", ""))


def _job_ref(job: dict[str, Any]) -> str:
    meta = job.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}".lstrip("/")


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def _container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _terminated_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The terminated state of the pod's failing container (non-zero exit first)."""
    states = [((s.get("state") or {}).get("terminated") or {}) for s in _container_statuses(pod)]
    states = [s for s in states if s]
    failing = [s for s in states if s.get("exitCode") not in (0, None)]
    return (failing or states or [{}])[-1]


def _disruption(pod: dict[str, Any]) -> str:
    """Why the platform took this pod away, or "" if it did not."""
    cond = _condition(pod, "DisruptionTarget")
    if cond and cond.get("status") == "True":
        return f"{cond.get('reason', 'DisruptionTarget')}: {cond.get('message', '')}".rstrip(": ")
    reason = (pod.get("status") or {}).get("reason")
    if reason in DISRUPTION_REASONS:
        return f"{reason}: {(pod.get('status') or {}).get('message', '')}".rstrip(": ")
    return ""


def _last_failed_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    failed = [p for p in pods if pod_phase(p) == "Failed"]
    return max(failed, key=pod_started, default=None)


def pod_started(pod: dict[str, Any]) -> str:
    """A sort key for pods: when they started (or were created)."""
    # RFC 3339 UTC timestamps sort as strings.
    return str((pod.get("status") or {}).get("startTime")
               or (pod.get("metadata") or {}).get("creationTimestamp") or "")


def _timestamp(value: object) -> datetime | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(str(value))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _exit_code_in(message: str) -> int | None:
    # The Job controller writes "... failed with exit code 2 matching FailJob rule ..."
    match = re.search(r"exit code (\d+)", message)
    return int(match.group(1)) if match else None


def is_pod_of(pod: dict[str, Any], job_name: str) -> bool:
    """Whether a pod belongs to the named Job (labels, or the owner reference)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if any(labels.get(key) == job_name for key in JOB_NAME_LABELS):
        return True
    return any(ref.get("kind") == "Job" and ref.get("name") == job_name
               for ref in meta.get("ownerReferences") or [])
