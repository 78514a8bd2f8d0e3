"""Kubernetes manifests, checked offline: the pure Job/Pod builders against
reviewed golden files, and the kustomize tree in k8s/ as `kubectl kustomize`
renders it, all against the official schemas (kubernetes-validate, strict)
plus the rules the schemas do not know: least-privilege RBAC, pod hardening,
DNS-1123 names, label syntax and no credentials.

Set BATCHLINE_UPDATE_GOLDEN=1 to rewrite tests/golden/kubernetes/*.yaml after
an intended change to kubernetes_job.py; review the diff before committing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT, SPEC, run_cli

from batchline import layout
from batchline.backends.kubernetes_job import UID, job_manifest, pod_manifest
from batchline.spec import load_spec, parse_spec
from batchline.stages import STAGES, producers
from batchline.task import Resources, StageTask

GOLDEN = Path(__file__).parent / "golden" / "kubernetes"
K8S = ROOT / "k8s"
TARGETS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev",
           "prod": K8S / "overlays" / "prod"}
NAMESPACES = {"base": "batchline", "dev": "batchline-dev", "prod": "batchline-prod"}
# The oldest Kubernetes we support (Indexed Jobs with backoffLimitPerIndex and
# podFailurePolicy are beta there and on by default) and the newest schema
# kubernetes-validate bundles.
VERSIONS = ("1.29.0", "1.37.0")
ROOT_URI = "s3://example-bucket/batchline"
RUN_ID = "readmission-20261126-210000-ab12"

# Exactly what the launcher may do (see k8s/base/rbac.yaml); any other rule
# is a privilege the launcher does not use.
ALLOWED_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}
# The listener (k8s/base/listener.yaml) creates launcher Jobs and nothing else.
ROLES = {"batchline-launcher": ALLOWED_RULES,
         "batchline-listener": {("batch", "jobs"): {"create"}}}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


# --- the pure builders --------------------------------------------------------

def _task(stage: str = "ingest", **changes: Any) -> StageTask:
    """A fully resolved task with fixed values, so its manifests are stable."""
    made_by = producers()
    upstream = {name: layout.output_uri(ROOT_URI, RUN_ID, made_by[dataset], dataset)
                for name, dataset in STAGES[stage].inputs.items()}
    attempt = int(changes.get("attempt", 1))
    fields: dict[str, Any] = {
        "run_id": RUN_ID, "stage": stage, "inputs": upstream,
        "outputs": {o: layout.output_uri(ROOT_URI, RUN_ID, stage, o)
                    for o in STAGES[stage].outputs},
        "params": {"source": "s3://example-bucket/landing/encounters.csv", "format": "csv"}
        if stage == "ingest" else {"batch_rows": 100000},
        "storage_root": ROOT_URI, "task_uri": layout.task_uri(ROOT_URI, RUN_ID, stage, attempt),
        "cache_key": "0123456789abcdef", "image": f"localhost/batchline-{stage}:0.1.0",
        "resources": Resources("1", "2Gi", 3600),
    }
    fields.update(changes)
    return StageTask(**fields)


def _plain() -> dict[str, Any]:
    return job_manifest(_task(), namespace="batchline")


def _sharded() -> dict[str, Any]:
    # The launcher's own settings: no Job-level retries, credentials by Secret
    # name, the task inline so no shard waits on a task file.
    task = _task("score", shard_count=3, resources=Resources("2", "4Gi", 1800))
    return job_manifest(task, namespace="batchline", backoff_limit=0,
                        env_from_secret="batchline-storage", wait_inputs_seconds=300,
                        env={"AWS_REGION": "us-east-1"})


def _placed() -> dict[str, Any]:
    task = _task("train", attempt=2, placement={
        "pipeline": "readmission",
        "node_selector": {"workload": "batch", "kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch",
                         "effect": "NoSchedule"}],
    })
    return job_manifest(task, namespace="batchline-prod", ttl_seconds_after_finished=600)


def _pod() -> dict[str, Any]:
    return pod_manifest(_task(), namespace="default",
                        env={"AWS_REGION": "us-east-1", "BATCHLINE_LOG_LEVEL": "INFO"})


BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "job-plain": _plain, "job-sharded": _sharded, "job-placement": _placed, "pod": _pod,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_manifest_matches_golden(name: str) -> None:
    manifest = BUILDERS[name]()
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("BATCHLINE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100), encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with BATCHLINE_UPDATE_GOLDEN=1 and review"
    # Parsed, not textual: key order and YAML style are not the contract.
    assert manifest == yaml.safe_load(path.read_text(encoding="utf-8")), (
        f"{name} changed; if intended, rerun with BATCHLINE_UPDATE_GOLDEN=1 and review the diff")


def test_golden_manifests_show_the_intended_shapes() -> None:
    """What each golden file is for, so a careless regeneration cannot bless a regression."""
    plain = yaml.safe_load((GOLDEN / "job-plain.yaml").read_text(encoding="utf-8"))
    assert "completionMode" not in plain["spec"] and plain["spec"]["backoffLimit"] == 2
    assert plain["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"

    sharded = yaml.safe_load((GOLDEN / "job-sharded.yaml").read_text(encoding="utf-8"))
    spec = sharded["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimitPerIndex"] == 0 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
    container = spec["template"]["spec"]["containers"][0]
    assert {"name": "BATCHLINE_SHARD_FROM_ENV", "value": "JOB_COMPLETION_INDEX"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "batchline-storage"}}]

    placed = yaml.safe_load((GOLDEN / "job-placement.yaml").read_text(encoding="utf-8"))
    pod = placed["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"workload": "batch", "kubernetes.io/arch": "amd64"}
    assert pod["tolerations"][0]["effect"] == "NoSchedule"
    assert placed["metadata"]["name"].endswith("-train-a2")

    bare = yaml.safe_load((GOLDEN / "pod.yaml").read_text(encoding="utf-8"))
    assert bare["kind"] == "Pod" and bare["spec"]["restartPolicy"] == "Never"


def test_rendered_run_jobs_pass_every_check() -> None:
    """`batchline render` (what people pipe into kubectl) goes through the same checks."""
    result = run_cli("render", str(SPEC), "--storage", ROOT_URI, "--run-id", RUN_ID,
                     "--secret", "batchline-storage", "--set", "stages.score.shards=3",
                     "--set", "stages.ingest.params.source=s3://example-bucket/landing/e.csv",
                     env={"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"})
    assert result.returncode == 0, result.stderr
    jobs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [j["metadata"]["labels"]["batchline.dev/stage"] for j in jobs] == \
        [s for s in STAGES if s in load_spec(SPEC).stages]
    assert jobs[-1]["spec"]["completionMode"] == "Indexed"
    # A credential in the launcher's environment never reaches a manifest.
    assert "EXAMPLEKEY" not in result.stdout and not _credential_findings(result.stdout)
    for job in jobs:
        where = f"render {job['metadata']['name']}"
        for version in VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)
        _check_names_and_labels(where, job)
        _assert_hardened(where, job["spec"]["template"])
        assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
        assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "batchline-storage"}}]


# --- the kustomize tree --------------------------------------------------------

def _kustomize(target: Path) -> str:
    result = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {target}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def rendered_text() -> dict[str, str]:
    return {name: _kustomize(path) for name, path in TARGETS.items()}


@pytest.fixture(scope="module")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: [d for d in yaml.safe_load_all(text) if d]
            for name, text in rendered_text.items()}


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _launcher_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    job = _one(docs, "Job", "batchline-run")
    cron = _one(docs, "CronJob", "batchline-nightly")
    return {"job": job["spec"]["template"],
            "cronjob": cron["spec"]["jobTemplate"]["spec"]["template"]}


def test_spec_copy_equals_the_original() -> None:
    # kustomize cannot read jobs/readmission.yaml (outside k8s/base), so the
    # ConfigMap is built from a copy that must not drift.
    assert (K8S / "base" / "readmission.yaml").read_bytes() == SPEC.read_bytes(), (
        "k8s/base/readmission.yaml differs from jobs/readmission.yaml: cp jobs/readmission.yaml "
        "k8s/base/readmission.yaml")


def _all_documents(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict]]:
    for name, build in BUILDERS.items():
        yield f"builder {name}", build()
    for target, docs in rendered.items():
        for doc in docs:
            yield f"{target} {doc['kind']}/{doc['metadata']['name']}", doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_schema(
        version: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert version in kubernetes_validate.utils.all_versions(), f"no bundled schema {version}"
    checked = 0
    for where, doc in _all_documents(rendered):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message}")
        checked += 1
    # 4 builders; base/dev/prod each render 12 objects.
    assert checked == len(BUILDERS) + sum(len(d) for d in rendered.values())


def test_each_render_has_the_expected_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target, docs in rendered.items():
        kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        spec_map = _one(docs, "ConfigMap")["metadata"]["name"]
        assert spec_map.startswith("batchline-spec-")  # content hash suffix
        assert kinds == sorted([
            f"Namespace/{NAMESPACES[target]}", "ServiceAccount/batchline-launcher",
            "ServiceAccount/batchline-stage", "Role/batchline-launcher",
            "RoleBinding/batchline-launcher", f"ConfigMap/{spec_map}", "Job/batchline-run",
            "CronJob/batchline-nightly", "ServiceAccount/batchline-listener",
            "Role/batchline-listener", "RoleBinding/batchline-listener",
            "Deployment/batchline-listener"]), target
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == NAMESPACES[target], (target, doc["kind"])


def test_rbac_is_exactly_least_privilege(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target, docs in rendered.items():
        assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")], target
        roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
        assert sorted(roles) == sorted(ROLES), target
        for name, allowed in ROLES.items():
            granted: dict[tuple[str, str], set[str]] = {}
            for rule in roles[name]["rules"]:
                assert set(rule) <= {"apiGroups", "resources", "verbs"}, (
                    f"{target}: rule uses {sorted(set(rule))} (resourceNames, nonResourceURLs?)")
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        key = (group, resource)
                        assert "*" not in (group, resource, *rule["verbs"]), f"{target}: *"
                        assert key in allowed, f"{target}: {name} may not touch {key}"
                        granted.setdefault(key, set()).update(rule["verbs"])
            assert granted == allowed, f"{target} {name}: {granted}"

        bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RoleBinding"}
        assert sorted(bindings) == sorted(ROLES), target
        for name, binding in bindings.items():
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                          "kind": "Role", "name": name}
            # The subject's namespace must be this render's, or the Role would be
            # granted to an account in another namespace (kustomize does not fix it).
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                            "namespace": NAMESPACES[target]}], target


def test_service_accounts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        launcher = _one(docs, "ServiceAccount", "batchline-launcher")
        stage = _one(docs, "ServiceAccount", "batchline-stage")
        listener = _one(docs, "ServiceAccount", "batchline-listener")
        assert launcher["automountServiceAccountToken"] is True
        assert listener["automountServiceAccountToken"] is True
        assert stage["automountServiceAccountToken"] is False
        for account in (launcher, stage, listener):
            arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
        # The spec the launcher reads names the stage account the stage Jobs use.
        spec = parse_spec(yaml.safe_load(_one(docs, "ConfigMap")["data"]["readmission.yaml"]))
        assert spec.backend_options("kubernetes")["service_account"] == "batchline-stage"
    dev, prod = (_one(rendered[t], "ServiceAccount", "batchline-stage") for t in ("dev", "prod"))
    assert dev["metadata"]["annotations"] != prod["metadata"]["annotations"]


def _assert_hardened(where: str, template: dict[str, Any]) -> None:
    pod = template["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == UID == 10001, where
    assert security["runAsGroup"] == UID, where
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert pod["restartPolicy"] == "Never", where
    tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["runAsNonRoot"] is True, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert not context.get("privileged"), where
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, f"{where}: no emptyDir on /tmp"
        assert "memory" in container["resources"]["limits"], where
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


def test_stage_pods_are_hardened_without_a_token() -> None:
    for name, build in BUILDERS.items():
        manifest = build()
        template = manifest if manifest["kind"] == "Pod" else manifest["spec"]["template"]
        _assert_hardened(name, template)
        assert template["spec"]["automountServiceAccountToken"] is False, name
        assert template["spec"]["serviceAccountName"] == "batchline-stage", name


def test_launcher_pods_are_hardened(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target, docs in rendered.items():
        for kind, template in _launcher_pods(docs).items():
            where = f"{target} {kind}"
            _assert_hardened(where, template)
            pod = template["spec"]
            assert pod["serviceAccountName"] == "batchline-launcher", where
            assert pod["automountServiceAccountToken"] is True, where  # it calls the API


def test_launcher_runs_the_pipeline(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target, docs in rendered.items():
        job = _one(docs, "Job", "batchline-run")
        cron = _one(docs, "CronJob", "batchline-nightly")
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
        assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        # One template, two owners: they must not drift apart.
        pods = _launcher_pods(docs)
        assert pods["job"] == pods["cronjob"], target

        pod = pods["job"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "localhost/batchline-launcher:0.1.0"
        assert container["args"][:6] == ["run", "/etc/batchline/readmission.yaml", "--backend",
                                         "kubernetes", "--in-cluster", "--namespace"]
        env = {e["name"]: e for e in container["env"]}
        # --namespace $(BATCHLINE_NAMESPACE) resolves to the pod's own namespace.
        assert container["args"][6] == "$(BATCHLINE_NAMESPACE)"
        assert env["BATCHLINE_NAMESPACE"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.namespace"}}
        assert "stages.ingest.params.source=$(BATCHLINE_SOURCE)" in container["args"]
        bucket = "CHANGE-ME-bucket" if target == "base" else f"CHANGE-ME-{target}-bucket"
        assert env["BATCHLINE_STORAGE"]["value"] == f"s3://{bucket}/batchline"
        assert env["BATCHLINE_SOURCE"]["value"].startswith(f"s3://{bucket}/")

        spec_map = _one(docs, "ConfigMap")
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next(m for m in mounts.values() if m["mountPath"] == "/etc/batchline")
        assert mount.get("readOnly") is True
        assert volumes[mount["name"]]["configMap"]["name"] == spec_map["metadata"]["name"]
        # The mounted spec is valid once the launcher applies its --set override.
        parse_spec(yaml.safe_load(spec_map["data"]["readmission.yaml"]), "configmap",
                   {"stages.ingest.params.source": env["BATCHLINE_SOURCE"]["value"],
                    "storage": env["BATCHLINE_STORAGE"]["value"]})
        assert spec_map["data"]["readmission.yaml"] == SPEC.read_text(encoding="utf-8")


def test_listener_deployment_listens_for_the_spec(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target, docs in rendered.items():
        deployment = _one(docs, "Deployment", "batchline-listener")
        template = deployment["spec"]["template"]
        assert deployment["spec"]["replicas"] == 1  # enough; two are safe (the claims)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            template["metadata"]["labels"].items()
        pod = template["spec"]
        assert "restartPolicy" not in pod  # a Deployment's pods restart (Always)
        _assert_hardened(f"{target} listener", {"spec": {**pod, "restartPolicy": "Never"}})
        assert pod["serviceAccountName"] == "batchline-listener"
        assert pod["terminationGracePeriodSeconds"] >= 30  # a long poll and one start
        (container,) = pod["containers"]
        assert container["image"] == "localhost/batchline-launcher:0.1.0"
        assert container["args"][:2] == ["listen", "/etc/batchline/readmission.yaml"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "--queue" in container["args"] and "$(BATCHLINE_QUEUE_URL)" in container["args"]
        assert env["BATCHLINE_QUEUE_URL"].startswith("https://sqs.")
        suffix = "" if target == "base" else f"{target}-"
        assert env["BATCHLINE_STORAGE"] == f"s3://CHANGE-ME-{suffix}bucket/batchline"
        # The mounted spec plus the listener's --set is a spec with a valid trigger.
        spec_map = _one(docs, "ConfigMap")
        spec = parse_spec(yaml.safe_load(spec_map["data"]["readmission.yaml"]), "configmap",
                          {"trigger.bucket": env["BATCHLINE_TRIGGER_BUCKET"],
                           "trigger.prefix": env["BATCHLINE_TRIGGER_PREFIX"],
                           "storage": env["BATCHLINE_STORAGE"]})
        assert spec.trigger_target() == ("ingest", "source")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/batchline")
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mount["name"]]["configMap"]["name"] == spec_map["metadata"]["name"]


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_overlays_differ_where_they_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def cron(target: str) -> dict[str, Any]:
        return _one(rendered[target], "CronJob", "batchline-nightly")

    assert cron("base")["spec"]["schedule"] == "0 2 * * *"
    assert cron("prod")["spec"]["schedule"] != cron("base")["spec"]["schedule"]
    resources = {t: _launcher_pods(rendered[t])["job"]["spec"]["containers"][0]["resources"]
                 for t in TARGETS}
    for kind, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        dev, base, prod = (_quantity(resources[t][kind][key]) for t in ("dev", "base", "prod"))
        assert dev < base < prod, (kind, key, resources)


def _labels_of(doc: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield doc["metadata"].get("labels") or {}
    spec = doc.get("spec") or {}
    if "jobTemplate" in spec:
        yield spec["jobTemplate"].get("metadata", {}).get("labels") or {}
        spec = spec["jobTemplate"]["spec"]
    if "template" in spec:
        yield spec["template"].get("metadata", {}).get("labels") or {}


def _check_names_and_labels(where: str, doc: dict[str, Any]) -> None:
    name = doc["metadata"]["name"]
    assert len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), f"{where}: bad name {name!r}"
    if doc["kind"] in ("Namespace", "Job", "Pod", "Service"):
        # These names become labels (job-name) or hostnames: DNS-1123 labels.
        assert len(name) <= 63 and DNS1123_LABEL.match(name), f"{where}: {name!r} > label"
    if doc["kind"] == "CronJob":
        # The controller appends an 11-character suffix for each Job.
        assert len(name) <= 52 and DNS1123_LABEL.match(name), f"{where}: {name!r}"
    for labels in _labels_of(doc):
        for key, value in labels.items():
            prefix, _, short = key.rpartition("/")
            assert not prefix or (len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix)), key
            assert len(short) <= 63 and LABEL_NAME.match(short), f"{where}: label key {key!r}"
            assert len(value) <= 63 and LABEL_VALUE.match(value), f"{where}: {key}={value!r}"


def test_names_and_labels_are_valid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for where, doc in _all_documents(rendered):
        _check_names_and_labels(where, doc)
    # The longest run id (32 characters) with a two-digit attempt still fits.
    longest = _task("features", run_id="r" * 32, attempt=10)
    _check_names_and_labels("longest", job_manifest(longest, namespace="batchline"))


def test_label_checks_catch_what_the_schema_does_not() -> None:
    bad = _plain()
    bad["metadata"]["labels"]["batchline.dev/run-id"] = "x" * 64
    kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)  # the schema lets it pass
    with pytest.raises(AssertionError, match="run-id"):
        _check_names_and_labels("bad", bad)
    bad = _plain()
    bad["metadata"]["name"] = "Readmission_Ingest"
    kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    with pytest.raises(AssertionError, match="bad name"):
        _check_names_and_labels("bad", bad)


CREDENTIALS = [
    re.compile(r"aws_secret", re.IGNORECASE),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"aws_session_token", re.IGNORECASE),
    re.compile(r"\b(password|passwd|token|secret)\s*[:=]\s*\S", re.IGNORECASE),
]


def _credential_findings(text: str) -> list[str]:
    return [m.group(0) for pattern in CREDENTIALS for m in pattern.finditer(text)]


def _env_with_values(doc: Any) -> Iterator[tuple[str, str]]:
    if isinstance(doc, dict):
        if "name" in doc and "value" in doc and isinstance(doc["name"], str):
            yield doc["name"], str(doc["value"])
        for value in doc.values():
            yield from _env_with_values(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _env_with_values(item)


def test_no_credentials_in_any_manifest(rendered_text: dict[str, str]) -> None:
    texts = dict(rendered_text)
    texts.update({f"builder {n}": yaml.safe_dump(b()) for n, b in BUILDERS.items()})
    for where, text in texts.items():
        assert not _credential_findings(text), f"{where}: {_credential_findings(text)}"
        for doc in yaml.safe_load_all(text):
            for name, _value in _env_with_values(doc):
                assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", name), (
                    f"{where}: env {name} has a literal value; use IRSA or envFrom a Secret")
        assert "kind: Secret\n" not in text, where


def test_credential_scan_finds_planted_secrets() -> None:
    # The scan above is only worth something if it fires on the real thing.
    planted = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    text = yaml.safe_dump(pod_manifest(_task(), namespace="default", env=planted))
    assert _credential_findings(text)
    assert _credential_findings("password: hunter2")
    assert _credential_findings("-----BEGIN RSA PRIVATE KEY-----\nMII")
    assert _credential_findings("id: AKIAIOSFODNN7EXAMPLE")
    assert any(re.search("ACCESS_KEY", n) for n, _ in _env_with_values(yaml.safe_load(text)))


def test_rendered_deadlines_leave_each_stage_its_own_timeout() -> None:
    """kubectl applies all four Jobs at once: waiting for upstream stages must not
    use up a stage's own timeout, and no stage may give up waiting too early."""
    from batchline.render import render_run

    spec = parse_spec(yaml.safe_load(SPEC.read_text(encoding="utf-8")), "spec", {
        "stages.ingest.params.source": "s3://example-bucket/landing/e.csv",
        "stages.ingest.resources.timeout_seconds": 100,
        "stages.features.resources.timeout_seconds": 200,
        "stages.train.resources.timeout_seconds": 400,
        "stages.score.resources.timeout_seconds": 800})
    jobs = {j["metadata"]["labels"]["batchline.dev/stage"]: j
            for j in render_run(spec, RUN_ID, ROOT_URI)}
    # The longest upstream chain: score reads features and train (which reads features).
    waits = {"ingest": 0, "features": 100, "train": 300, "score": 700}
    for stage, job in jobs.items():
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        own = spec.stages[stage].resources.timeout_seconds
        assert job["spec"]["activeDeadlineSeconds"] == waits[stage] + own, stage
        if waits[stage]:
            assert args[-2:] == ["--wait-inputs", str(waits[stage])], stage
        else:
            assert "--wait-inputs" not in args, stage


def test_submit_creates_one_hardened_launcher_job_that_resumes_the_run(
        moto_server: str, s3_bucket: str, tmp_path: Path) -> None:
    """`submit --backend kubernetes`: the manifest first, then a launcher Job in the
    cluster (kmock's API over HTTP) that resumes it, in-cluster; a repeated create of
    the same run's Job (a lost response) keeps the one Job."""
    from kube_cluster import Cluster

    from batchline.backends.kubernetes import Options
    from batchline.backends.kubernetes_launcher import create_launcher_job
    from batchline.manifest import RunManifest

    cluster = Cluster(namespace="batchline")
    try:
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
        root = f"{s3_bucket}/root"
        result = run_cli("submit", str(SPEC), "--storage", root, "--backend", "kubernetes",
                         "--run-id", "sub1", "--secret", "batchline-storage",
                         "--set", f"stages.ingest.params.source={s3_bucket}/landing/e.csv",
                         env={"KUBECONFIG": str(kubeconfig)})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "sub1"
        manifest = RunManifest.load(root, "sub1")
        assert manifest.state == "pending" and manifest.backend == "kubernetes"
        jobs = cluster.batch.list_namespaced_job("batchline").items
        assert [j.metadata.name for j in jobs] == ["batchline-launch-sub1"]
        job = cluster.api_client.sanitize_for_serialization(jobs[0])
        for key in ("status", "creationTimestamp", "uid", "resourceVersion"):
            job.pop(key, None)
            job["metadata"].pop(key, None)
        for version in VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)
        _check_names_and_labels("launcher job", job)
        _assert_hardened("launcher job", job["spec"]["template"])
        # An evicted or preempted launcher pod is replaced (and resumes the run); any
        # other failure ends the Job, and the run is resumed by hand or by its events.
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["podFailurePolicy"] == {"rules": [
            {"action": "Ignore",
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "batchline-launcher"
        container = pod["containers"][0]
        assert container["image"] == "localhost/batchline-launcher:0.1.0"
        assert container["args"] == ["resume", "sub1", "--storage", root, "--backend",
                                     "kubernetes", "--in-cluster", "--namespace", "batchline",
                                     "--secret", "batchline-storage"]
        assert container["envFrom"] == [{"secretRef": {"name": "batchline-storage"}}]
        assert "testing" not in json.dumps(job)  # the submitter's keys stay with it
        # A retried create finds the Job there and keeps it.
        options = Options(namespace="batchline", kubeconfig=str(kubeconfig))
        assert create_launcher_job("sub1", root, "img", options) == \
            "batchline/batchline-launch-sub1"
        assert len(cluster.batch.list_namespaced_job("batchline").items) == 1
        # The same run id again is refused before anything is created.
        again = run_cli("submit", str(SPEC), "--storage", root, "--backend", "kubernetes",
                        "--run-id", "sub1",
                        "--set", f"stages.ingest.params.source={s3_bucket}/landing/e.csv",
                        env={"KUBECONFIG": str(kubeconfig)})
        assert again.returncode == 2 and "already exists" in again.stderr
    finally:
        cluster.close()
