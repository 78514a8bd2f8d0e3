"""Pure builders: a StageTask as a SageMaker CreateTrainingJob / CreateProcessingJob request.

No client and no I/O here: each request is a plain dict in the API's own
shape (PascalCase), exactly what `aws sagemaker create-training-job
--cli-input-json` takes, so `batchline render --backend sagemaker` prints it
and tests check it against botocore's service model.

train runs as a Training Job: it is the stage that makes a model, and a
Training Job keeps that model (`/opt/ml/model` -> model.tar.gz), offers
managed spot with checkpoints, and is what model registries and lineage
tools look for. ingest, features and score read and write datasets and run
as Processing Jobs. Both run the same image and entrypoint; the stage finds
its task in the job's configuration (see batchline/sagemaker_contract.py).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import Field

from batchline import layout, storage
from batchline.backends.base import BackendOptions
from batchline.task import StageTask

TRAINING_STAGES = frozenset({"train"})
# Where the stage finds its task in a Training Job (hyperparameters.json).
TASK_HYPERPARAMETER = "batchline_task"
CHECKPOINT_PATH = "/opt/ml/checkpoints"
TAG_RUN_ID = "batchline:run-id"
TAG_STAGE = "batchline:stage"
TAG_ATTEMPT = "batchline:attempt"
TAG_CACHE_KEY = "batchline:cache-key"
TAG_TASK_URI = "batchline:task-uri"
# Describe*Job returns no tags, but it does return the environment: the cache
# key travels there too, so a relaunch can tell its own job from another's.
CACHE_KEY_ENV = "BATCHLINE_CACHE_KEY"
# SageMaker job names: letters, digits and hyphens, at most 63 characters.
_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_ARN = r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$"
INSTANCE_TYPE = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"


class SageMakerOptions(BackendOptions):
    """The spec's `sagemaker:` section (or `backends.sagemaker:`)."""

    role_arn: str | None = Field(None, pattern=ROLE_ARN, description="execution role the "
                                 "jobs run as (needs the policy from `batchline render`)")
    instance_type: str = Field("ml.m5.large", pattern=INSTANCE_TYPE)
    # stage -> instance type, for the stages that need another size than the default
    instance_types: dict[str, str] = Field(default_factory=dict)
    volume_size_gb: int = Field(30, ge=1, le=16384)
    subnets: list[str] = Field(default_factory=list, max_length=16)
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)
    kms_key_id: str | None = Field(None, description="KMS key for volumes and job outputs")
    # Managed spot for train: cheaper, may be interrupted; the job waits up to
    # spot_max_wait_seconds for capacity and resumes from its checkpoints.
    spot: bool = False
    spot_max_wait_seconds: int | None = Field(None, ge=1, le=28 * 24 * 3600)
    checkpoint_s3_uri: str | None = Field(None, pattern=r"^s3://")
    tags: dict[str, str] = Field(default_factory=dict)
    # Plain settings the stage needs to find storage (endpoint, region); never
    # credentials: a job gets those from its execution role.
    env: dict[str, str] = Field(default_factory=dict)
    region: str | None = None
    poll_seconds: float = Field(10.0, gt=0, le=300)

    def instance_for(self, stage: str) -> str:
        value = self.instance_types.get(stage, self.instance_type)
        if not re.fullmatch(INSTANCE_TYPE, value):
            raise ValueError(f"instance_types.{stage}: {value!r} is not an ml.* instance type")
        return value


def is_training(task: StageTask) -> bool:
    return task.stage in TRAINING_STAGES


def job_name(task: StageTask) -> str:
    """`<run id>-<stage>-a<attempt>`: unique per attempt and deterministic, so a create
    repeated after a lost response finds the job it already made."""
    name = f"{task.run_id}-{task.stage}-a{task.attempt}"
    if len(name) > 63:  # keep it unique when cut: a hash of the whole name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    if not _JOB_NAME.match(name):
        raise ValueError(f"job name {name!r} is not a valid SageMaker job name")
    return name


def tags(task: StageTask, options: SageMakerOptions) -> list[dict[str, str]]:
    """The user's tags, then ours: run, stage, attempt, cache key and task (for adoption)."""
    ours = {TAG_RUN_ID: task.run_id, TAG_STAGE: task.stage, TAG_ATTEMPT: str(task.attempt),
            TAG_CACHE_KEY: cache_key_of(task), TAG_TASK_URI: task.task_uri}
    merged = {**options.tags, **ours}
    return [{"Key": k, "Value": v[:256]} for k, v in merged.items()]


def cache_key_of(task: StageTask) -> str:
    return task.cache_key or "none"


def environment(task: StageTask, options: SageMakerOptions) -> dict[str, str]:
    return dict(sorted({**options.env, CACHE_KEY_ENV: cache_key_of(task)}.items()))


def output_prefix(task: StageTask) -> str:
    """Where SageMaker keeps its own records of the stage (model.tar.gz, output)."""
    return storage.join(layout.run_uri(task.storage_root, task.run_id), task.stage, "sagemaker")


def _stopping(task: StageTask, options: SageMakerOptions, spot: bool) -> dict[str, int]:
    stop = {"MaxRuntimeInSeconds": task.resources.timeout_seconds}
    if spot:  # the wait for spot capacity counts too, and must cover the runtime
        stop["MaxWaitTimeInSeconds"] = max(options.spot_max_wait_seconds or 0,
                                           task.resources.timeout_seconds)
    return stop


def training_request(task: StageTask, options: SageMakerOptions) -> dict[str, Any]:
    """CreateTrainingJob for the task: the image runs with `train`, the task URI in
    hyperparameters.json, one instance per shard."""
    resources: dict[str, Any] = {"InstanceType": options.instance_for(task.stage),
                                 "InstanceCount": task.shard_count,
                                 "VolumeSizeInGB": options.volume_size_gb}
    output: dict[str, Any] = {"S3OutputPath": output_prefix(task)}
    if options.kms_key_id:
        resources["VolumeKmsKeyId"] = options.kms_key_id
        output["KmsKeyId"] = options.kms_key_id
    request: dict[str, Any] = {
        "TrainingJobName": job_name(task),
        "RoleArn": _role(options),
        "AlgorithmSpecification": {"TrainingImage": task.image, "TrainingInputMode": "File"},
        "HyperParameters": {TASK_HYPERPARAMETER: task.task_uri},
        "OutputDataConfig": output,
        "ResourceConfig": resources,
        "StoppingCondition": _stopping(task, options, options.spot),
        "Tags": tags(task, options),
    }
    request["Environment"] = environment(task, options)
    if options.subnets:
        request["VpcConfig"] = {"Subnets": list(options.subnets),
                                "SecurityGroupIds": list(options.security_group_ids)}
    if options.spot:
        request["EnableManagedSpotTraining"] = True
        request["CheckpointConfig"] = {"S3Uri": options.checkpoint_s3_uri or storage.join(
            output_prefix(task), "checkpoints"), "LocalPath": CHECKPOINT_PATH}
    return request


def processing_request(task: StageTask, options: SageMakerOptions) -> dict[str, Any]:
    """CreateProcessingJob for the task: the image's own entrypoint with
    `<stage> --task <uri>` as arguments, one instance per shard."""
    cluster: dict[str, Any] = {"InstanceCount": task.shard_count,
                               "InstanceType": options.instance_for(task.stage),
                               "VolumeSizeInGB": options.volume_size_gb}
    if options.kms_key_id:
        cluster["VolumeKmsKeyId"] = options.kms_key_id
    request: dict[str, Any] = {
        "ProcessingJobName": job_name(task),
        "RoleArn": _role(options),
        "AppSpecification": {"ImageUri": task.image,
                             "ContainerArguments": [task.stage, "--task", task.task_uri]},
        "ProcessingResources": {"ClusterConfig": cluster},
        "StoppingCondition": _stopping(task, options, spot=False),
        "Tags": tags(task, options),
    }
    request["Environment"] = environment(task, options)
    if options.subnets:
        request["NetworkConfig"] = {"VpcConfig": {
            "Subnets": list(options.subnets),
            "SecurityGroupIds": list(options.security_group_ids)}}
    return request


def job_request(task: StageTask, options: SageMakerOptions) -> tuple[str, dict[str, Any]]:
    """("training" or "processing", the Create*Job request) for the task."""
    if is_training(task):
        return "training", training_request(task, options)
    return "processing", processing_request(task, options)


def _role(options: SageMakerOptions) -> str:
    if not options.role_arn:
        raise ValueError("backends.sagemaker.role_arn is not set: name the execution role "
                         "the jobs run as (arn:aws:iam::<account>:role/<name>)")
    return options.role_arn
