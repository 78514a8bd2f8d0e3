"""`batchline submit --backend kubernetes`: the run's launcher as a Job in the cluster.

`submit` writes the run's manifest first (pending, spec frozen in it), so the
launcher pod needs no ConfigMap: it runs `batchline resume RUN` against the
same storage, in-cluster, and the run outlives the submitter's laptop or CI
job. The pod is hardened as k8s/base/launcher-job.yaml is (that file is the
kubectl way to the same thing); storage credentials come from the backend's
`secret` option (envFrom), never from the submitter's environment.
"""

from __future__ import annotations

from typing import Any

from batchline.backends.kubernetes import (
    Options,
    Retry,
    _describe,
    _sdk,
    _status,
    api_client_from_config,
)
from batchline.backends.kubernetes_job import TMP_SIZE, UID
from batchline.errors import BackendError

LAUNCHER_SERVICE_ACCOUNT = "batchline-launcher"  # k8s/base/rbac.yaml grants it Jobs and pods


def launcher_job_name(run_id: str) -> str:
    return f"batchline-launch-{run_id}"[:63].rstrip("-")


def launcher_job(run_id: str, root: str, image: str, options: Options) -> dict[str, Any]:
    """The Job whose one pod resumes (that is, starts) the submitted run."""
    labels = {"app.kubernetes.io/name": "batchline", "app.kubernetes.io/component": "launcher",
              "app.kubernetes.io/managed-by": "batchline", "batchline.dev/run-id": run_id}
    args = ["resume", run_id, "--storage", root, "--backend", "kubernetes", "--in-cluster",
            "--namespace", options.namespace]
    if options.secret:
        args += ["--secret", options.secret]
    container: dict[str, Any] = {
        "name": "launcher",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        # An evicted or preempted launcher pod lets go of the run (SIGTERM) and
        # leaves its running stage Job to the pod that replaces it, which adopts it.
        "env": [{"name": k, "value": v}
                for k, v in sorted({**options.env, "BATCHLINE_ON_SIGTERM": "detach"}.items())],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    if options.secret:
        container["envFrom"] = [{"secretRef": {"name": options.secret}}]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": launcher_job_name(run_id), "namespace": options.namespace,
                     "labels": labels},
        "spec": {
            # One launcher per run: a second pod racing the first would only
            # meet the run's lease. A failed launcher is resumed, not retried.
            "backoffLimit": 0,
            # ... but a launcher pod evicted or preempted (DisruptionTarget) is
            # not a failure of the run: the Job controller starts another pod,
            # which resumes the same run (`resume RUN` is all this pod does).
            "podFailurePolicy": {"rules": [
                {"action": "Ignore",
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": LAUNCHER_SERVICE_ACCOUNT,
                    # The launcher talks to the API: it creates and watches stage Jobs.
                    "automountServiceAccountToken": True,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID,
                                        "runAsGroup": UID, "fsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}],
                },
            },
        },
    }


def create_launcher_job(run_id: str, root: str, image: str, options: Options) -> str:
    """Create the launcher Job; returns `namespace/name`. A Job of the same run that
    exists already (a retried submit whose response was lost) is kept, not doubled."""
    manifest = launcher_job(run_id, root, image, options)
    ref = f"{options.namespace}/{manifest['metadata']['name']}"
    api = api_client_from_config(options.context, options.in_cluster, options.kubeconfig)
    batch = _sdk().client.BatchV1Api(api)
    try:
        Retry().call(lambda: batch.create_namespaced_job(options.namespace, manifest,
                                                         _preload_content=False),
                     f"create job {ref}")
    except Exception as exc:
        if _status(exc) != 409:
            raise BackendError(f"cannot create the launcher job {ref}: {_describe(exc)}; "
                               "check the namespace, the context and that the "
                               f"{LAUNCHER_SERVICE_ACCOUNT} service account exists "
                               "(kubectl apply -k k8s/overlays/...)") from exc
    return ref
