"""The Lambda handler for EventBridge: claim, then start the run's launcher where it outlives
the invocation — a SageMaker Processing Job (moto) or a Kubernetes launcher Job (the kmock
harness); and the listener creating launcher Jobs. Duplicates start nothing; a takeover after
a death between launch and mark meets the existing Job (409) and keeps it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import BATCHLINE, SAGEMAKER_ROLE, SPEC, eventually
from kube_cluster import JOBS, Cluster
from s3_events import counts, drain, wire

from batchline import storage
from batchline.aws_lambda import handler
from batchline.backends import validate_options
from batchline.backends.sagemaker_launcher import launcher_processing_request
from batchline.claims import claim_uri
from batchline.events import EventError, parse_event, run_id_for
from batchline.manifest import RunManifest, RunState


@pytest.fixture
def bridged(moto_server: str) -> tuple[Any, dict[str, Any]]:
    """A versioned bucket wired through EventBridge, one object put: the wiring and the
    EventBridge event moto delivered (as a Lambda target receives it)."""
    wiring = wire("eventbridge")
    boto3.client("s3").put_object(Bucket=wiring.bucket, Key="in/drop.csv", Body=b"a,b\n1,2\n")
    (body,) = drain(wiring.queue_url)
    return wiring, json.loads(body)


def _spec(tmp_path: Path, bucket: str, **top: Any) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    data["trigger"] = {"bucket": bucket, "prefix": "in/", "suffix": ".csv"}
    data.update(top)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    def configure(spec: Path, root: str, backend: str, options: dict[str, Any]) -> None:
        monkeypatch.setenv("BATCHLINE_SPEC", str(spec))
        monkeypatch.setenv("BATCHLINE_STORAGE", root)
        monkeypatch.setenv("BATCHLINE_BACKEND", backend)
        monkeypatch.setenv("BATCHLINE_OPTIONS", json.dumps(options))
    return configure


def test_lambda_starts_a_sagemaker_launcher_once(bridged: tuple[Any, dict[str, Any]],
                                                 tmp_path: Path, s3_bucket: str,
                                                 lambda_env: Any) -> None:
    wiring, event = bridged
    root = f"{s3_bucket}/store"
    lambda_env(_spec(tmp_path, wiring.bucket), root, "sagemaker", {"role_arn": SAGEMAKER_ROLE})
    first = handler(event)
    (obj,) = first["objects"]
    run_id = run_id_for("readmission", parse_event(event)[0])
    assert obj == {"object": parse_event(event)[0].describe(), "outcome": "started",
                   "run_id": run_id}
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    job = sagemaker.describe_processing_job(ProcessingJobName=f"batchline-launch-{run_id}")
    assert job["AppSpecification"]["ContainerArguments"] == ["resume", run_id, "--storage", root]
    assert job["AppSpecification"]["ImageUri"] == "localhost/batchline-launcher:0.1.0"
    assert job["RoleArn"] == SAGEMAKER_ROLE
    # moto's Describe omits Environment: the request as built carries the storage endpoint.
    built = launcher_processing_request(run_id, root, "img", validate_options(
        "sagemaker", {"role_arn": SAGEMAKER_ROLE}, "test"))
    assert built["Environment"]["AWS_ENDPOINT_URL"] == os.environ["AWS_ENDPOINT_URL"]
    assert built["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    manifest = RunManifest.load(root, run_id)
    assert manifest.state is RunState.PENDING and manifest.backend == "sagemaker"
    assert manifest.spec["stages"]["ingest"]["params"]["source"] == \
        f"s3://{wiring.bucket}/in/drop.csv"
    for _ in range(3):  # EventBridge's at-least-once: the same event again
        assert handler(event)["objects"][0]["outcome"] == "duplicate"
    names = [j["ProcessingJobName"] for j in
             sagemaker.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]]
    assert names.count(f"batchline-launch-{run_id}") == 1


def test_lambda_refuses_what_the_spec_refuses(bridged: tuple[Any, dict[str, Any]],
                                              tmp_path: Path, s3_bucket: str,
                                              lambda_env: Any) -> None:
    wiring, event = bridged
    lambda_env(_spec(tmp_path, wiring.bucket), f"{s3_bucket}/store", "sagemaker",
               {"role_arn": SAGEMAKER_ROLE})
    event["detail"]["object"]["key"] = "in/part[1].csv"
    with pytest.raises(EventError, match=r"glob character"):
        handler(event)
    event["detail"]["object"]["key"] = "elsewhere/x.csv"
    assert handler(event)["objects"][0]["outcome"] == "ignored"
    assert handler({"detail-type": "Object Deleted", "source": "aws.s3"}) == {"objects": []}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    kube = Cluster()
    yield kube
    kube.close()


def test_lambda_creates_launcher_jobs_and_a_second_create_is_a_409(
        bridged: tuple[Any, dict[str, Any]], tmp_path: Path, s3_bucket: str,
        lambda_env: Any, cluster: Cluster) -> None:
    wiring, event = bridged
    root = f"{s3_bucket}/store"
    options = {"kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
               "context": "kmock", "namespace": "ns"}
    lambda_env(_spec(tmp_path, wiring.bucket), root, "kubernetes", options)
    assert handler(event)["objects"][0]["outcome"] == "started"
    run_id = run_id_for("readmission", parse_event(event)[0])
    job = cluster.batch.read_namespaced_job(f"batchline-launch-{run_id}", "ns")
    assert job.spec.template.spec.containers[0].args[:2] == ["resume", run_id]
    assert handler(event)["objects"][0]["outcome"] == "duplicate"
    assert cluster.requests("create", JOBS) == 1  # the claim stopped the duplicate first
    # As if the first starter died after creating the Job but before marking its claim:
    claim = json.loads(storage.read_text(claim_uri(root, run_id)))
    claim.update(state="claimed", holder={**claim["holder"], "renewed_at": 0, "ttl": 1})
    storage.write_text(claim_uri(root, run_id), json.dumps(claim))
    assert handler(event)["objects"][0]["outcome"] == "started"  # taken over ...
    assert cluster.requests("create", JOBS) == 2  # ... its create met the Job: 409, kept
    assert [j.metadata.name for j in cluster.batch.list_namespaced_job("ns").items] == \
        [f"batchline-launch-{run_id}"]
    assert json.loads(storage.read_text(claim_uri(root, run_id)))["state"] == "started"


def test_the_listener_creates_launcher_jobs(tmp_path: Path, s3_bucket: str,
                                            cluster: Cluster, moto_server: str) -> None:
    wiring = wire("s3")
    root = f"{s3_bucket}/store"
    spec = _spec(tmp_path, wiring.bucket)
    for i in range(3):
        boto3.client("s3").put_object(Bucket=wiring.bucket, Key=f"in/{i}.csv", Body=b"a\n1\n")
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
    proc = subprocess.Popen([*BATCHLINE, "listen", str(spec), "--queue", wiring.queue_url,
                             "--storage", root, "--backend", "kubernetes", "--wait-seconds",
                             "1", "--max-messages", "4", "-o", f"kubeconfig={kubeconfig}",
                             "--context", "kmock", "--namespace", "ns"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"started": 3, "ignored": 1}
    eventually(lambda: counts(wiring.queue_url) == (0, 0), 10, "the queue drained")
    jobs = sorted(j.metadata.name for j in cluster.batch.list_namespaced_job("ns").items)
    assert len(jobs) == 3 and all(j.startswith("batchline-launch-readmission-ev-") for j in jobs)
