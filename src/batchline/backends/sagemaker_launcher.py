"""A run's launcher as a SageMaker Processing Job: the launcher image resuming the run.

What a Lambda function (batchline.aws_lambda) starts for a run on the
sagemaker backend: it cannot host the launcher itself (it is frozen between
invocations and killed after 15 minutes), so, as `submit --backend kubernetes`
does with a launcher Job, the manifest is written first and the launcher
image runs `batchline resume RUN --storage ROOT` as a one-instance Processing
Job, which then starts the stages' own jobs. The job's name comes from the run
id, so a second create for the same run finds the first ("already exists") and
starts nothing twice.
"""

from __future__ import annotations

from typing import Any

from batchline.backends.sagemaker import _already_exists
from batchline.backends.sagemaker_job import SageMakerOptions
from batchline.errors import BackendError, SpecError

LAUNCHER_INSTANCE = "ml.t3.medium"  # plans and polls; the stages' instances do the work


def launcher_job_name(run_id: str) -> str:
    return f"batchline-launch-{run_id}"[:63].rstrip("-")


def launcher_processing_request(run_id: str, root: str, image: str,
                                options: SageMakerOptions) -> dict[str, Any]:
    """CreateProcessingJob for the run's launcher (pure: no client, no I/O)."""
    if not options.role_arn:
        raise SpecError("backends.sagemaker.role_arn is not set: the launcher job runs as "
                        "that execution role (it needs the launcher policy of `batchline "
                        "render --backend sagemaker`)")
    cluster: dict[str, Any] = {"InstanceCount": 1, "InstanceType": LAUNCHER_INSTANCE,
                               "VolumeSizeInGB": 1}
    if options.kms_key_id:
        cluster["VolumeKmsKeyId"] = options.kms_key_id
    request: dict[str, Any] = {
        "ProcessingJobName": launcher_job_name(run_id),
        "RoleArn": options.role_arn,
        "AppSpecification": {"ImageUri": image,
                             "ContainerArguments": ["resume", run_id, "--storage", root]},
        "ProcessingResources": {"ClusterConfig": cluster},
        # The launcher outlives its longest stage; SageMaker's own ceiling is 5 days.
        "StoppingCondition": {"MaxRuntimeInSeconds": 5 * 24 * 3600},
        "Environment": dict(sorted(options.env.items())),
        "Tags": [{"Key": k, "Value": v[:256]} for k, v in
                 {**options.tags, "batchline:run-id": run_id,
                  "batchline:component": "launcher"}.items()],
    }
    if options.subnets:
        request["NetworkConfig"] = {"VpcConfig": {
            "Subnets": list(options.subnets),
            "SecurityGroupIds": list(options.security_group_ids)}}
    return request


def create_launcher_processing_job(run_id: str, root: str, image: str,
                                   options: SageMakerOptions) -> str:
    """Start the run's launcher job; returns its name. One that exists already (a
    repeated start) is kept, not doubled. `options` as the backend validates them
    (their `env` defaults to this process's storage endpoint and region)."""
    import boto3

    request = launcher_processing_request(run_id, root, image, options)
    name = request["ProcessingJobName"]
    sagemaker = boto3.client("sagemaker", region_name=options.region)
    try:
        sagemaker.create_processing_job(**request)
    except Exception as exc:  # botocore's ClientError and its kin
        if not _already_exists(exc):
            raise BackendError(f"cannot create the launcher processing job {name}: {exc}; "
                               "check the role (iam:PassRole), the image and the "
                               "region") from exc
    return name
