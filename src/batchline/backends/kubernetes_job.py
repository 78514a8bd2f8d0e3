"""Pure builders: a StageTask as a batch/v1 Job (or a bare v1 Pod) manifest.

No client and no I/O here, so every manifest is a golden-file test away from
review. The pod is hardened by default: non-root, read-only root filesystem
with an emptyDir on /tmp, every capability dropped, the RuntimeDefault seccomp
profile, no privilege escalation and no service-account token (stages never
call the Kubernetes API).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from batchline.causes import EXIT_BAD_INPUT
from batchline.task import StageTask

UID = 10001
CONTAINER = "stage"
# A DNS-1123 label: what names of namespaces, service accounts and Secrets must be.
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ANNOTATION_CACHE_KEY = "batchline.dev/cache-key"
ANNOTATION_TASK_URI = "batchline.dev/task-uri"
INLINE_TASK_ENV = "BATCHLINE_TASK"
TMP_SIZE = "2Gi"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def job_name(task: StageTask) -> str:
    """`<run id>-<stage>-a<attempt>`: deterministic, so a relaunch finds its Job (409)."""
    name = f"{task.run_id}-{task.stage}-a{task.attempt}"
    if len(name) > 63:  # keep it unique when cut: a hash of the whole name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    if not _DNS1123.match(name):
        raise ValueError(f"job name {name!r} is not a DNS-1123 label")
    return name


def labels(task: StageTask) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "batchline",
        "app.kubernetes.io/component": task.stage,
        "app.kubernetes.io/part-of": str(task.placement.get("pipeline", "batchline")),
        "app.kubernetes.io/managed-by": "batchline",
        "batchline.dev/run-id": task.run_id,
        "batchline.dev/stage": task.stage,
        "batchline.dev/attempt": str(task.attempt),
    }


def _env(task: StageTask, env: dict[str, str] | None, inline_task: bool) -> list[dict[str, Any]]:
    out = [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    if task.shard_count > 1:
        out.append({"name": "BATCHLINE_SHARD_FROM_ENV", "value": "JOB_COMPLETION_INDEX"})
    if inline_task:
        out.append({"name": INLINE_TASK_ENV, "value": task.to_json()})
    return out


def pod_spec(task: StageTask, *, service_account: str = "batchline-stage",
             env: dict[str, str] | None = None, env_from_secret: str | None = None,
             inline_task: bool = False, wait_inputs_seconds: int = 0) -> dict[str, Any]:
    """The hardened pod spec that runs one stage."""
    args = [task.stage, "--task", f"env:{INLINE_TASK_ENV}" if inline_task else task.task_uri]
    if wait_inputs_seconds:
        args += ["--wait-inputs", str(wait_inputs_seconds)]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": task.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {
            # /tmp is an emptyDir on the node's disk: ask for it, so the
            # scheduler counts it and the kubelet evicts a runaway stage.
            "requests": {"cpu": task.resources.cpu, "memory": task.resources.memory,
                         "ephemeral-storage": TMP_SIZE},
            "limits": {"memory": task.resources.memory, "ephemeral-storage": TMP_SIZE},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    variables = _env(task, env, inline_task)
    if variables:
        container["env"] = variables
    if env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": env_from_secret}}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}],
    }
    if task.placement.get("node_selector"):
        spec["nodeSelector"] = dict(task.placement["node_selector"])
    if task.placement.get("tolerations"):
        spec["tolerations"] = [dict(t) for t in task.placement["tolerations"]]
    return spec


def _failure_policy(indexed: bool) -> dict[str, Any]:
    # Exit 2 is bad input: retrying cannot help, so stop at once. A pod taken
    # away by preemption or eviction (DisruptionTarget) is not the stage's
    # fault, so it does not use up a retry.
    return {"rules": [
        {"action": "FailIndex" if indexed else "FailJob",
         "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                         "values": [EXIT_BAD_INPUT]}},
        {"action": "Ignore",
         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def job_manifest(task: StageTask, *, namespace: str, service_account: str = "batchline-stage",
                 ttl_seconds_after_finished: int = 3600, backoff_limit: int = 2,
                 env: dict[str, str] | None = None, env_from_secret: str | None = None,
                 inline_task: bool = False, wait_inputs_seconds: int = 0) -> dict[str, Any]:
    """A batch/v1 Job that runs one attempt of one stage (all shards, Indexed)."""
    meta = {"name": job_name(task), "namespace": namespace, "labels": labels(task),
            "annotations": {ANNOTATION_CACHE_KEY: task.cache_key,
                            ANNOTATION_TASK_URI: task.task_uri}}
    indexed = task.shard_count > 1
    spec: dict[str, Any] = {
        "activeDeadlineSeconds": task.resources.timeout_seconds,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
        "podFailurePolicy": _failure_policy(indexed),
        "template": {
            "metadata": {"labels": labels(task)},
            "spec": pod_spec(task, service_account=service_account, env=env,
                             env_from_secret=env_from_secret, inline_task=inline_task,
                             wait_inputs_seconds=wait_inputs_seconds),
        },
    }
    if indexed:
        # With backoffLimitPerIndex a failed shard is retried alone; the
        # Job-wide backoffLimit is then left to its (unbounded) default.
        spec.update({"completionMode": "Indexed", "completions": task.shard_count,
                     "parallelism": task.shard_count, "backoffLimitPerIndex": backoff_limit})
    else:
        spec["backoffLimit"] = backoff_limit
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def pod_manifest(task: StageTask, *, namespace: str, **options: Any) -> dict[str, Any]:
    """The Job's pod as a bare v1 Pod (for `podman kube play` and debugging)."""
    spec = pod_spec(task, **options)
    spec["activeDeadlineSeconds"] = task.resources.timeout_seconds
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": job_name(task), "namespace": namespace, "labels": labels(task)},
            "spec": spec}
