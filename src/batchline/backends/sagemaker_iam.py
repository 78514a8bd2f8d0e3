"""Pure builders: least-privilege IAM policies for running a pipeline on SageMaker.

Two principals, two documents:
- the **execution role** the jobs run as: read and write under the storage
  root (and read the raw sources), pull the stage images from ECR, write
  the two SageMaker log groups, and use the KMS key and VPC when configured;
- the **launcher** (a person, CI, the launcher Job): create, describe and stop
  this pipeline's jobs, pass that one role to SageMaker and nothing else,
  read the jobs' logs, and keep the run's records under the storage root.

`batchline render --backend sagemaker` prints both next to the requests;
deploy/sagemaker/ keeps the ones for jobs/readmission.yaml, and the tests
check that every rendered request is allowed by them and little else is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from batchline.backends.sagemaker_job import SageMakerOptions

LOG_GROUPS = ("/aws/sagemaker/TrainingJobs", "/aws/sagemaker/ProcessingJobs")
SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"


def split_s3(uri: str) -> tuple[str, str]:
    """("bucket", "key/prefix") of an s3:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3:// URI")
    return parsed.netloc, parsed.path.strip("/")


def account_of(role_arn: str) -> str:
    return role_arn.split(":")[4]


def _object_arn(uri: str, wildcard: bool) -> str:
    bucket, key = split_s3(uri)
    return f"arn:aws:s3:::{bucket}/{key}/*" if wildcard and key else \
        f"arn:aws:s3:::{bucket}/*" if wildcard else f"arn:aws:s3:::{bucket}/{key}"


def _storage_statements(root: str, sid: str) -> list[dict[str, Any]]:
    bucket, prefix = split_s3(root)
    list_condition = {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}} if prefix else None
    listing: dict[str, Any] = {"Sid": f"{sid}List", "Effect": "Allow",
                               "Action": "s3:ListBucket",
                               "Resource": f"arn:aws:s3:::{bucket}"}
    if list_condition:
        listing["Condition"] = list_condition
    return [{"Sid": f"{sid}ReadWrite", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                        "s3:AbortMultipartUpload"],
             "Resource": _object_arn(root, wildcard=True)}, listing]


def _log_group_arns(region: str, account: str) -> list[str]:
    """The two log groups and their streams (`...:log-group:NAME:log-stream:...`)."""
    return [f"arn:aws:logs:{region}:{account}:log-group:{group}:*" for group in LOG_GROUPS]


def execution_role_policy(root: str, sources: list[str], images: list[str],
                          options: SageMakerOptions, region: str) -> dict[str, Any]:
    """What the jobs themselves may do (attach to the execution role)."""
    account = account_of(options.role_arn or "arn:aws:iam::000000000000:role/x")
    statements = _storage_statements(root, "Storage")
    if sources:
        statements.append({"Sid": "ReadSources", "Effect": "Allow", "Action": "s3:GetObject",
                           "Resource": sorted({_object_arn(s, wildcard=False)
                                               for s in sources})})
    repositories = sorted({arn for arn in (_repository_arn(image) for image in images) if arn})
    if repositories:
        statements += [
            # GetAuthorizationToken has no resource to scope it to.
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken",
             "Resource": "*"},
            {"Sid": "PullStageImages", "Effect": "Allow",
             "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                        "ecr:BatchCheckLayerAvailability"], "Resource": repositories}]
    statements += [
        {"Sid": "WriteJobLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
         "Resource": _log_group_arns(region, account)},
        {"Sid": "CreateJobLogGroups", "Effect": "Allow", "Action": "logs:CreateLogGroup",
         "Resource": [f"arn:aws:logs:{region}:{account}:log-group:{group}"
                      for group in LOG_GROUPS]},
        # Instance metrics; PutMetricData has no resource, its namespace is the scope.
        {"Sid": "JobMetrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData",
         "Resource": "*", "Condition": {"StringLike": {"cloudwatch:namespace":
                                                       "/aws/sagemaker/*"}}},
    ]
    if options.kms_key_id:
        statements.append({"Sid": "UseKmsKey", "Effect": "Allow",
                           "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey",
                                      "kms:CreateGrant", "kms:DescribeKey"],
                           "Resource": options.kms_key_id})
    if options.subnets:
        # Network interfaces in the job's subnets: EC2 offers no resource-level
        # scoping for the Describe calls SageMaker makes first.
        statements.append({"Sid": "JobNetworkInterfaces", "Effect": "Allow",
                           "Action": ["ec2:CreateNetworkInterface",
                                      "ec2:CreateNetworkInterfacePermission",
                                      "ec2:DeleteNetworkInterface",
                                      "ec2:DeleteNetworkInterfacePermission",
                                      "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs",
                                      "ec2:DescribeDhcpOptions", "ec2:DescribeSubnets",
                                      "ec2:DescribeSecurityGroups"], "Resource": "*"})
    if options.spot and options.checkpoint_s3_uri and \
            not options.checkpoint_s3_uri.startswith(root.rstrip("/") + "/"):
        statements += _storage_statements(options.checkpoint_s3_uri, "Checkpoints")
    return {"Version": "2012-10-17", "Statement": statements}


def trust_policy() -> dict[str, Any]:
    """Who may assume the execution role: SageMaker only."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": SAGEMAKER_SERVICE},
        "Action": "sts:AssumeRole"}]}


def launcher_policy(root: str, job_prefix: str, options: SageMakerOptions,
                    region: str) -> dict[str, Any]:
    """What the launcher may do: this pipeline's jobs, that role, the logs, the root."""
    role = options.role_arn or ""
    account = account_of(role) if role else "*"
    jobs = [f"arn:aws:sagemaker:{region}:{account}:{kind}/{job_prefix}*"
            for kind in ("training-job", "processing-job")]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "RunPipelineJobs", "Effect": "Allow",
         "Action": ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob", "sagemaker:CreateProcessingJob",
                    "sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob",
                    "sagemaker:AddTags"],
         "Resource": jobs},
        {"Sid": "PassExecutionRole", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": role,
         "Condition": {"StringEquals": {"iam:PassedToService": SAGEMAKER_SERVICE}}},
        {"Sid": "ReadJobLogs", "Effect": "Allow",
         "Action": ["logs:DescribeLogStreams", "logs:GetLogEvents"],
         "Resource": _log_group_arns(region, account)},
        *_storage_statements(root, "RunRecords"),
    ]}


def _repository_arn(image: str) -> str | None:
    """The ECR repository ARN of an image reference, or None when it is not on ECR."""
    host, _, rest = image.partition("/")
    if ".dkr.ecr." not in host:
        return None
    image_account, _, _, image_region = host.split(".")[:4]
    repository = rest.rsplit("@", 1)[0].rsplit(":", 1)[0]
    return f"arn:aws:ecr:{image_region}:{image_account}:repository/{repository}"
