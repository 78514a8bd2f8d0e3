"""SageMaker requests and IAM policies: pure builders checked against the real API models.

Every rendered Create*Job request is validated against botocore's SageMaker
service model (types, required fields, lengths, patterns, enums), so a field
the real API would refuse fails here; the same requests are sent once to
moto's SageMaker over HTTP through the backend (the unmodified SDK core) and
read back. The IAM policies kept in deploy/sagemaker/ are the rendered ones,
and a small evaluator checks that they allow every rendered request and
refuse what lies outside the pipeline.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import regex
from botocore.validate import ParamValidator
from conftest import ROOT, SPEC, run_cli

from batchline.backends.base import Outcome
from batchline.backends.sagemaker_job import (
    SageMakerOptions,
    job_name,
    job_request,
    processing_request,
    training_request,
)
from batchline.backends.sagemaker_status import phase_or_outcome
from batchline.causes import Cause
from batchline.errors import SpecError
from batchline.render import render_sagemaker, tasks_for_run
from batchline.spec import load_spec

ROLE = "arn:aws:iam::123456789012:role/batchline-sagemaker"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ROOT_URI = "s3://acme-ml/batchline"
SOURCE = "s3://acme-landing/readmission/encounters.csv"
GOLDEN = ROOT / "deploy" / "sagemaker"
RUN_ID = "readmission-20261128-0900-ab12"
FULL = SageMakerOptions(role_arn=ROLE, instance_types={"train": "ml.m5.2xlarge"},
                        subnets=["subnet-0abc"], security_group_ids=["sg-0abc"],
                        kms_key_id="arn:aws:kms:us-east-1:123456789012:key/1234abcd",
                        spot=True, tags={"team": "risk"}, region="us-east-1",
                        env={"AWS_REGION": "us-east-1"})


def spec_for_aws(**sets: Any) -> Any:
    return load_spec(SPEC, {"stages.ingest.params.source": SOURCE, "image_registry": REGISTRY,
                            "storage": ROOT_URI, **sets})


def rendered(options: SageMakerOptions = FULL, **sets: Any) -> dict[str, Any]:
    return render_sagemaker(spec_for_aws(**sets), RUN_ID, ROOT_URI, options)


# -- the requests against botocore's service model -------------------------------

SERVICE = botocore.session.get_session().get_service_model("sagemaker")


def strict_problems(value: Any, shape: Any, path: str = "") -> list[str]:
    """What ParamValidator leaves out: maximum lengths and sizes, patterns, enums."""
    problems = []
    kind = shape.type_name
    if kind == "structure":
        for key, item in value.items():
            problems += strict_problems(item, shape.members[key], f"{path}.{key}")
    elif kind == "list":
        problems += _bounds(len(value), shape, path)
        for i, item in enumerate(value):
            problems += strict_problems(item, shape.member, f"{path}[{i}]")
    elif kind == "map":
        problems += _bounds(len(value), shape, path)
        for key, item in value.items():
            problems += strict_problems(key, shape.key, f"{path}<key>")
            problems += strict_problems(item, shape.value, f"{path}.{key}")
    elif kind == "string":
        problems += _bounds(len(value), shape, path)
        pattern = shape.metadata.get("pattern")
        # The model's patterns are Java regexes (\p{L}, \p{Alnum}): `regex` reads them.
        if pattern and not regex.fullmatch(pattern.replace("\\p{Alnum}", "[[:alnum:]]"), value):
            problems.append(f"{path}: {value!r} does not match {pattern}")
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} not in {shape.enum}")
    elif kind in ("integer", "long"):
        problems += _bounds(value, shape, path)
    return problems


def _bounds(size: int, shape: Any, path: str) -> list[str]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if (low is not None and size < low) or (high is not None and size > high):
        return [f"{path}: {size} outside [{low}, {high}]"]
    return []


def validate(api: str, request: dict[str, Any]) -> list[str]:
    shape = SERVICE.operation_model(api).input_shape
    report = ParamValidator().validate(request, shape)
    return ([report.generate_report()] if report.has_errors() else []) + \
        strict_problems(request, shape)


@pytest.mark.parametrize("options", [FULL, SageMakerOptions(role_arn=ROLE)],
                         ids=["every-option", "defaults"])
def test_every_rendered_request_is_valid_for_the_sagemaker_api(options: SageMakerOptions
                                                                ) -> None:
    jobs = rendered(options, **{"stages.score.shards": 3})["jobs"]
    assert [(j["stage"], j["api"]) for j in jobs] == [
        ("ingest", "CreateProcessingJob"), ("features", "CreateProcessingJob"),
        ("train", "CreateTrainingJob"), ("score", "CreateProcessingJob")]
    for job in jobs:
        assert validate(job["api"], job["request"]) == [], job["stage"]
    score = jobs[3]["request"]
    assert score["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    assert score["AppSpecification"]["ContainerArguments"] == [
        "score", "--task", f"{ROOT_URI}/runs/{RUN_ID}/score/task-1.json"]


@pytest.mark.parametrize("stage", ["ingest", "features", "train", "score"])
def test_requests_match_golden(stage: str) -> None:
    """Every option set, score on 3 instances; BATCHLINE_UPDATE_GOLDEN=1 rewrites
    tests/golden/sagemaker/*.json, and the diff is reviewed like code."""
    job = next(j for j in rendered(FULL, **{"stages.score.shards": 3})["jobs"]
               if j["stage"] == stage)
    path = ROOT / "tests" / "golden" / "sagemaker" / f"{stage}.json"
    if os.environ.get("BATCHLINE_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(job["request"], indent=2) + "\n")
    assert json.loads(path.read_text()) == job["request"]


def test_a_field_the_api_refuses_fails_validation() -> None:
    """The validator itself can fail: a bad instance type, a 64-character name, a missing
    role are each reported."""
    request = rendered()["jobs"][2]["request"]
    bad = {**request, "TrainingJobName": "x" * 64,
           "ResourceConfig": {**request["ResourceConfig"], "InstanceType": "m5.large"}}
    del bad["RoleArn"]
    problems = "\n".join(validate("CreateTrainingJob", bad))
    assert "RoleArn" in problems and "TrainingJobName" in problems
    assert "m5.large" in problems


def test_training_request_carries_task_spot_checkpoints_vpc_kms_and_tags() -> None:
    spec = spec_for_aws()
    task = next(t for t in tasks_for_run(spec, RUN_ID, ROOT_URI) if t.stage == "train")
    task = dataclasses.replace(task, cache_key="k123", attempt=2)
    request = training_request(task, FULL)
    assert request["TrainingJobName"] == f"{RUN_ID}-train-a2"
    assert request["HyperParameters"] == {"batchline_task": task.task_uri}
    assert request["AlgorithmSpecification"]["TrainingImage"] == \
        f"{REGISTRY}/batchline-train:0.1.0"
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.2xlarge", "InstanceCount": 1,
                                         "VolumeSizeInGB": 30, "VolumeKmsKeyId": FULL.kms_key_id}
    timeout = spec.stages["train"].resources.timeout_seconds
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": timeout,
                                            "MaxWaitTimeInSeconds": timeout}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {
        "S3Uri": f"{ROOT_URI}/runs/{RUN_ID}/train/sagemaker/checkpoints",
        "LocalPath": "/opt/ml/checkpoints"}
    assert request["VpcConfig"] == {"Subnets": ["subnet-0abc"], "SecurityGroupIds": ["sg-0abc"]}
    assert request["OutputDataConfig"]["KmsKeyId"] == FULL.kms_key_id
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "team": "risk", "batchline:run-id": RUN_ID, "batchline:stage": "train",
        "batchline:attempt": "2", "batchline:cache-key": "k123",
        "batchline:task-uri": task.task_uri}
    assert request["Environment"] == {"AWS_REGION": "us-east-1", "BATCHLINE_CACHE_KEY": "k123"}
    # A processing stage never gets spot settings (SageMaker has none for it).
    ingest = next(t for t in tasks_for_run(spec, RUN_ID, ROOT_URI) if t.stage == "ingest")
    assert "EnableManagedSpotTraining" not in processing_request(ingest, FULL)


def test_job_names_are_unique_per_attempt_and_at_most_63_characters() -> None:
    spec = spec_for_aws()
    task = tasks_for_run(spec, RUN_ID, ROOT_URI)[1]
    names = {job_name(dataclasses.replace(task, attempt=a)) for a in range(1, 11)}
    assert len(names) == 10
    long = dataclasses.replace(task, run_id="r" * 32, stage="features-and-more-stage-text")
    other = dataclasses.replace(long, attempt=2)
    assert len(job_name(long)) <= 63 and job_name(long) != job_name(other)
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", job_name(long))


def test_missing_role_and_bad_instance_types_name_the_field() -> None:
    task = tasks_for_run(spec_for_aws(), RUN_ID, ROOT_URI)[0]
    with pytest.raises(ValueError, match="backends.sagemaker.role_arn"):
        job_request(task, SageMakerOptions())
    with pytest.raises(SpecError, match="backends.sagemaker.instance_type"):
        load_spec(SPEC, {"sagemaker.instance_type": "m5.large"})


def test_the_backend_needs_a_role_before_any_job() -> None:
    from batchline.backends import get_backend

    with pytest.raises(SpecError, match="backends.sagemaker.role_arn is not set"):
        get_backend("sagemaker", {"instance_type": "ml.c5.xlarge"})


def test_the_spec_takes_a_sagemaker_section() -> None:
    spec = load_spec(SPEC, {"sagemaker": {"role_arn": ROLE, "spot": True,
                                          "instance_types": {"ingest": "ml.c5.xlarge"}}})
    assert spec.backend_options("sagemaker")["instance_types"] == {"ingest": "ml.c5.xlarge"}
    with pytest.raises(SpecError, match="backends.sagemaker.role_arn"):
        load_spec(SPEC, {"sagemaker.role_arn": "admin"})


def test_render_cli_prints_requests_and_refuses_local_storage(tmp_path: Path) -> None:
    args = ["render", str(SPEC), "--backend", "sagemaker", "--run-id", RUN_ID,
            "--set", f"stages.ingest.params.source={SOURCE}", "--set",
            f"image_registry={REGISTRY}", "--option", f"role_arn={ROLE}"]
    done = run_cli(*args, "--storage", ROOT_URI)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    request = out["jobs"][0]["request"]
    assert validate("CreateProcessingJob", request) == []
    # No setting of this shell (endpoints, region) leaks into a request for AWS.
    assert request["Environment"] == {"BATCHLINE_CACHE_KEY": "none"}
    local = run_cli(*args, "--storage", str(tmp_path))
    assert local.returncode == 2 and "s3://" in local.stderr
    no_role = run_cli(*args[:-2], "--storage", ROOT_URI)
    assert no_role.returncode == 2 and "role_arn" in no_role.stderr


# -- the IAM policies ----------------------------------------------------------------

def allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Whether an Allow statement matches (conditions are taken as met)."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) \
            else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) \
            else [statement["Resource"]]
        if any(fnmatch.fnmatchcase(action, a) for a in actions) and \
                any(fnmatch.fnmatchcase(resource, r) for r in resources):
            return True
    return False


def s3_object(uri: str) -> str:
    return "arn:aws:s3:::" + uri.removeprefix("s3://")


def test_policies_kept_in_the_repo_are_the_rendered_ones() -> None:
    policies = rendered()["policies"]
    for name, document in policies.items():
        path = GOLDEN / f"{name.replace('_', '-')}-policy.json"
        if os.environ.get("BATCHLINE_UPDATE_GOLDEN") == "1":
            path.write_text(json.dumps(document, indent=2) + "\n")
        assert json.loads(path.read_text()) == document, f"{path} is stale; rerun with " \
            "BATCHLINE_UPDATE_GOLDEN=1 and review the diff"


def test_policies_allow_every_rendered_request_and_little_else() -> None:
    out = rendered()
    execution, launcher = out["policies"]["execution_role"], out["policies"]["launcher"]
    for job in out["jobs"]:
        request, task = job["request"], job["task"]
        kind = "training-job" if job["api"] == "CreateTrainingJob" else "processing-job"
        name = request["TrainingJobName" if kind == "training-job" else "ProcessingJobName"]
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{name}"
        verb = "TrainingJob" if kind == "training-job" else "ProcessingJob"
        for action in (f"Create{verb}", f"Describe{verb}", f"Stop{verb}", "AddTags"):
            assert allowed(launcher, f"sagemaker:{action}", arn), (action, arn)
        assert allowed(launcher, "iam:PassRole", request["RoleArn"])
        group = "TrainingJobs" if kind == "training-job" else "ProcessingJobs"
        stream = (f"arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/{group}:"
                  f"log-stream:{name}/algo-1-1")
        assert allowed(launcher, "logs:GetLogEvents", stream)
        assert allowed(execution, "logs:PutLogEvents", stream)
        # The launcher writes the task; the job reads it, its inputs and sources,
        # and writes its outputs.
        assert allowed(launcher, "s3:PutObject", s3_object(task["task_uri"]))
        for uri in [task["task_uri"], *task["inputs"].values(), *task["sources"]]:
            assert allowed(execution, "s3:GetObject", s3_object(uri) + "/part-0.parquet"
                           if uri in task["inputs"].values() else s3_object(uri)), uri
        for uri in task["outputs"].values():
            assert allowed(execution, "s3:PutObject", s3_object(uri) + "/_SUCCESS.json")
        image = request.get("AlgorithmSpecification", {}).get("TrainingImage") or \
            request["AppSpecification"]["ImageUri"]
        repo = image.split("/", 1)[1].split(":")[0]
        assert allowed(execution, "ecr:BatchGetImage",
                       f"arn:aws:ecr:us-east-1:123456789012:repository/{repo}")
    # ... and little else.
    assert not allowed(launcher, "iam:PassRole", "arn:aws:iam::123456789012:role/admin")
    assert not allowed(launcher, "sagemaker:CreateTrainingJob",
                       "arn:aws:sagemaker:us-east-1:123456789012:training-job/other-run-train")
    assert not allowed(launcher, "sagemaker:DeleteTrainingJob", "*")
    assert not allowed(execution, "s3:PutObject", "arn:aws:s3:::acme-ml/elsewhere/x")
    assert not allowed(execution, "s3:PutObject", s3_object(SOURCE))
    assert not allowed(execution, "ecr:BatchGetImage",
                       "arn:aws:ecr:us-east-1:123456789012:repository/other")
    star = [s["Sid"] for p in (execution, launcher) for s in p["Statement"]
            if s["Resource"] == "*"]
    assert star == ["EcrLogin", "JobMetrics", "JobNetworkInterfaces"]
    pass_role = [s for s in launcher["Statement"] if s["Action"] == "iam:PassRole"]
    assert pass_role[0]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_the_backend_calls_only_what_the_launcher_policy_allows() -> None:
    from batchline.backends.sagemaker import LAUNCHER_ACTIONS

    launcher = rendered()["policies"]["launcher"]
    granted = {a for s in launcher["Statement"] for a in
               (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert set(LAUNCHER_ACTIONS) <= granted
    assert granted - set(LAUNCHER_ACTIONS) == {"iam:PassRole", "s3:GetObject", "s3:PutObject",
                                               "s3:DeleteObject", "s3:AbortMultipartUpload",
                                               "s3:ListBucket"}


# -- the translators -----------------------------------------------------------------

T = "training"
P = "processing"
END_STATES = [
    (T, {"TrainingJobStatus": "Completed"}, Cause.SUCCEEDED, 0),
    (T, {"TrainingJobStatus": "Failed", "FailureReason": "CapacityError: Unable to provision "
         "requested ML compute capacity. Please retry using a different ML instance type."},
     Cause.UNSCHEDULABLE, None),
    (P, {"ProcessingJobStatus": "Failed", "FailureReason": "OutOfMemoryError: Please use an "
         "instance type with more memory, or reduce the size of job data processed on an "
         "instance."}, Cause.OUT_OF_MEMORY, 137),
    (P, {"ProcessingJobStatus": "Failed", "FailureReason": "AlgorithmError: See job logs",
         "ExitMessage": "exit code 137: killed"}, Cause.OUT_OF_MEMORY, 137),
    (T, {"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded"},
     Cause.DEADLINE, None),
    (T, {"TrainingJobStatus": "Failed", "SecondaryStatus": "Interrupted",
         "FailureReason": "Spot instance interrupted; insufficient spot capacity"},
     Cause.EVICTED, None),
    (T, {"TrainingJobStatus": "Failed", "FailureReason": "AlgorithmError: exit code 2: "
         "column ward_id is missing"}, Cause.BAD_INPUT, 2),
    (P, {"ProcessingJobStatus": "Failed", "FailureReason": "ClientError: Cannot pull image "
         "123.dkr.ecr.us-east-1.amazonaws.com/batchline-ingest:0.1.0"}, Cause.IMAGE_PULL, None),
    (P, {"ProcessingJobStatus": "Stopped"}, Cause.CANCELLED, None),
    (T, {"TrainingJobStatus": "Failed", "FailureReason": "AlgorithmError: exit code 1: boom"},
     Cause.USER_ERROR, 1),
    (T, {"TrainingJobStatus": "Failed", "FailureReason": "InternalServerError: We "
         "encountered an internal error."}, Cause.USER_ERROR, None),
]


@pytest.mark.parametrize(("kind", "desc", "cause", "code"), END_STATES)
def test_every_end_state_maps_to_its_cause(kind: str, desc: dict[str, Any], cause: Cause,
                                           code: int | None) -> None:
    outcome = phase_or_outcome(kind, desc)
    assert isinstance(outcome, Outcome)
    got = outcome.cause or Cause.from_exit(outcome.exit_code, outcome.oom_killed)
    assert (got, outcome.exit_code) == (cause, code)


def test_phases_and_unknown_statuses() -> None:
    assert phase_or_outcome(T, {"TrainingJobStatus": "InProgress",
                                "SecondaryStatus": "Starting"}) == "pending"
    assert phase_or_outcome(T, {"TrainingJobStatus": "InProgress",
                                "SecondaryStatus": "Training"}) == "running"
    assert phase_or_outcome(P, {"ProcessingJobStatus": "InProgress"}) == "pending"
    assert phase_or_outcome(P, {"ProcessingJobStatus": "InProgress",
                                "ProcessingStartTime": 1.0}) == "running"
    unknown = phase_or_outcome(T, {"TrainingJobStatus": "Hibernating",
                                   "SecondaryStatus": "Dreaming"})
    assert not isinstance(unknown, (str, Outcome))
    assert unknown.status == "Hibernating" and "Dreaming" in unknown.detail


# -- the requests once more, against moto's own SageMaker ------------------------------

def test_moto_sagemaker_accepts_the_requests_the_backend_sends(moto_server: str,
                                                               s3_bucket: str) -> None:
    """Through the backend and the unmodified SDK core; moto completes every job at
    once, so this checks request shapes (and adoption), not running."""
    from batchline.backends.sagemaker import SageMakerBackend

    spec = load_spec(SPEC, {"stages.ingest.params.source": f"{s3_bucket}/x.csv"})
    backend = SageMakerBackend(role_arn=ROLE, poll_seconds=0.01,
                               session=boto3.Session(region_name="us-east-1"))
    client = boto3.client("sagemaker")
    for task in tasks_for_run(spec, "moto-shape", s3_bucket)[1:3]:  # processing, training
        kind, request = job_request(task, backend.options)
        handle = backend.start(task)
        if kind == "training":
            desc = client.describe_training_job(TrainingJobName=handle.ref)
            assert desc["RoleArn"] == request["RoleArn"]
            for key in ("AlgorithmSpecification", "HyperParameters", "ResourceConfig",
                        "StoppingCondition", "OutputDataConfig"):
                assert {k: v for k, v in desc[key].items() if k in request[key]} == \
                    request[key], key
        else:
            desc = client.describe_processing_job(ProcessingJobName=handle.ref)
            assert desc["AppSpecification"] == request["AppSpecification"]
            assert desc["StoppingCondition"] == request["StoppingCondition"]
        assert backend.poll(handle, 0) == Outcome(exit_code=0, oom_killed=False)
        # moto refuses no duplicate name, so the second start follows the same job.
        again = backend.start(task)
        assert again.ref == handle.ref
