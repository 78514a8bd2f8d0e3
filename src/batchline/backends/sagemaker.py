"""SageMaker backend: train as a Training Job, the other stages as Processing Jobs.

Requests come from the pure builder in `sagemaker_job.py`, end states are
judged by the pure translators in `sagemaker_status.py`; this module only
talks to SageMaker through the SDK's core (`sagemaker-core`:
`TrainingJob`, `ProcessingJob`) and to CloudWatch Logs through boto3. The SDK
is an optional extra (`pip install 'batchline[sagemaker]'`), imported only
when a backend is built; stage images never carry it.

Throttling and dropped connections are retried by the SDK's own client
(standard retry mode, 10 attempts). A create whose response got lost is
retried by that client too, and the retry meets the job it already made:
that job is adopted when it runs the very same task, never duplicated.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import Field

from batchline.backends.base import Backend, Handle, Outcome, Phase
from batchline.backends.sagemaker_job import (
    CACHE_KEY_ENV,
    TASK_HYPERPARAMETER,
    SageMakerOptions,
    cache_key_of,
    job_request,
)
from batchline.backends.sagemaker_status import Unknown, phase_or_outcome
from batchline.errors import BackendError, SpecError
from batchline.task import StageTask

log = logging.getLogger(__name__)

INSTALL_HINT = ("the sagemaker backend needs the SageMaker SDK core: "
                "pip install 'batchline[sagemaker]'")
LOG_GROUPS = {"training": "/aws/sagemaker/TrainingJobs",
              "processing": "/aws/sagemaker/ProcessingJobs"}
# Every SageMaker and Logs action the launcher calls (the launcher's IAM policy
# must allow exactly these; tests/test_sagemaker_render.py checks it).
LAUNCHER_ACTIONS = (
    "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
    "sagemaker:StopTrainingJob", "sagemaker:CreateProcessingJob",
    "sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob",
    "sagemaker:AddTags", "logs:DescribeLogStreams", "logs:GetLogEvents",
)
# The stage's host number in a log stream name: `<job>/algo-<n>-<epoch>`.
_HOST = re.compile(r"/algo-(\d+)")
# Plain settings a job needs to find storage; credentials come from the role.
JOB_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def _job_env() -> dict[str, str]:
    return {k: os.environ[k] for k in JOB_ENV if k in os.environ}


class Options(SageMakerOptions):
    env: dict[str, str] = Field(default_factory=_job_env)


_SDK: dict[str, ModuleType] = {}


def _resources() -> ModuleType:
    """`sagemaker.core.resources`, imported on first use with a clear hint if missing."""
    if "resources" not in _SDK:
        try:
            import sagemaker.core.resources as resources
        except ImportError as exc:
            raise BackendError(INSTALL_HINT) from exc
        # The SDK logs at INFO on its own handler ("Not applying SDK defaults
        # from ..."); a run's output keeps to one line per state change.
        logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
        _SDK["resources"] = resources
    return _SDK["resources"]


def _to_sdk(request: dict[str, Any], shape: str) -> dict[str, Any]:
    """An API-shaped request as the keyword arguments of the SDK's `create`."""
    from sagemaker.core.utils.code_injection.codec import transform

    kwargs: dict[str, Any] = transform(request, shape)
    return kwargs


def _to_api(job: Any) -> dict[str, Any]:
    """An SDK resource back in the API's shape (what the translators read)."""
    from sagemaker.core.utils.utils import serialize

    data: dict[str, Any] = serialize(job)
    return data


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code", ""))


@dataclass
class SageMakerHandle(Handle):
    kind: str = "training"  # or "processing"
    job: Any = None  # the SDK's TrainingJob / ProcessingJob
    last: dict[str, Any] = field(default_factory=dict)  # the last Describe response
    unknown: str = ""  # the last unknown status reported, to report each once


class SageMakerBackend(Backend[SageMakerHandle]):
    """Runs each stage attempt as one SageMaker job and follows it to its end."""

    name = "sagemaker"
    # One job runs every shard: InstanceCount = shards, each host takes its
    # shard from resourceconfig.json (see batchline/sagemaker_contract.py).
    fans_out_shards = True
    adopts_by_name = True  # a job's name is unique: ResourceInUse finds the running one
    # MaxRuntimeInSeconds normally ends a job; this is the safety net.
    deadline_slack_seconds = 60.0

    def __init__(self, options: Options | None = None, *, session: Any = None,
                 **fields: Any) -> None:
        self.options = options or Options(**fields)
        if not self.options.role_arn:  # fail before any job, not at the first submit
            raise SpecError("backends.sagemaker.role_arn is not set: name the execution role "
                            "the jobs run as (spec `sagemaker: {role_arn: ...}` or --option "
                            "role_arn=arn:aws:iam::<account>:role/<name>); `batchline render "
                            "--backend sagemaker` prints the policy it needs")
        self.poll_seconds = self.options.poll_seconds
        _resources()
        import boto3

        # A session of our own: the SDK caches one client per session, so two
        # backends (two endpoints in tests, two regions) never share one.
        self.session = session or boto3.Session(region_name=self.options.region)
        self.region = self.options.region or self.session.region_name or "us-east-1"
        self._logs = self.session.client("logs", region_name=self.region)

    # -- start ----------------------------------------------------------------

    def request(self, task: StageTask) -> tuple[str, dict[str, Any]]:
        """The task's ("training" | "processing", Create*Job request)."""
        try:
            return job_request(task, self.options)
        except ValueError as exc:
            raise SpecError(str(exc)) from None

    def start(self, task: StageTask) -> SageMakerHandle:
        kind, request = self.request(task)
        resources = _resources()
        cls = resources.TrainingJob if kind == "training" else resources.ProcessingJob
        shape = "CreateTrainingJobRequest" if kind == "training" else \
            "CreateProcessingJobRequest"
        name = request["TrainingJobName" if kind == "training" else "ProcessingJobName"]
        try:
            job = cls.create(**_to_sdk(request, shape), session=self.session,
                             region=self.region)
            log.info("stage %s: submitted to sagemaker as %s job %s", task.stage, kind, name)
        except Exception as exc:
            if not _already_exists(exc):
                raise BackendError(f"cannot create {kind} job {name}: {exc}") from exc
            job = self._adopt(cls, kind, name, task)
        return SageMakerHandle(task, name, kind=kind, job=job)

    def _get(self, cls: Any, kind: str, name: str) -> Any:
        key = "training_job_name" if kind == "training" else "processing_job_name"
        return cls.get(**{key: name}, session=self.session, region=self.region)

    def _adopt(self, cls: Any, kind: str, name: str, task: StageTask) -> Any:
        # The name exists: made by a create whose response was lost (the SDK
        # retried it), or by a launcher that died after submitting. Same task
        # URI and cache key means the same work: follow it instead of failing.
        job = self._get(cls, kind, name)
        desc = _to_api(job)
        have = desc.get("Environment") or {}
        task_ref = (desc.get("HyperParameters") or {}).get(TASK_HYPERPARAMETER) if \
            kind == "training" else " ".join((desc.get("AppSpecification") or {}).get(
                "ContainerArguments") or [])
        same = task.task_uri in str(task_ref) and \
            have.get(CACHE_KEY_ENV) == cache_key_of(task)
        if not same:
            raise BackendError(f"{kind} job {name} already exists for a different task; "
                               "resume the run (a new attempt gets a new job name)")
        log.info("stage %s: adopted existing sagemaker %s job %s (same task and cache key)",
                 task.stage, kind, name)
        return job

    def memory_limit(self, task: StageTask) -> str:
        """A job has its instance's memory, whatever stages.<stage>.resources.memory says."""
        return (f"the {self.options.instance_for(task.stage)} instance (choose a larger one "
                f"with sagemaker.instance_types.{task.stage})")

    # -- poll -----------------------------------------------------------------

    def poll(self, handle: SageMakerHandle, timeout: float) -> Outcome | Phase:
        time.sleep(max(0.0, timeout))  # SageMaker has no watch: describe at this pace
        try:
            handle.job.refresh()
        except Exception as exc:  # the SDK's client already retried throttling
            raise BackendError(f"cannot describe {handle.kind} job {handle.ref}: {exc}") \
                from exc
        desc = handle.last = _to_api(handle.job)
        state = phase_or_outcome(handle.kind, desc)
        if isinstance(state, Unknown):
            text = f"{state.status} {state.detail}".strip()
            if text != handle.unknown:
                log.warning("stage %s: sagemaker job %s reports an unknown status %s; "
                            "still waiting", handle.task.stage, handle.ref, text)
                handle.unknown = text
            return "running" if desc.get("TrainingStartTime") or \
                desc.get("ProcessingStartTime") else "pending"
        return state

    # -- logs -----------------------------------------------------------------

    def fetch_logs(self, handle: SageMakerHandle) -> dict[int | None, str]:
        """Each host's CloudWatch stream, by shard (host algo-<n> runs shard n-1)."""
        group = LOG_GROUPS[handle.kind]
        out: dict[int | None, str] = {}
        for stream in self._streams(group, handle.ref):
            match = _HOST.search(stream)
            host = int(match.group(1)) - 1 if match else 0
            shard = host if handle.task.shard_count > 1 else None
            out[shard] = out.get(shard, "") + self._events(group, stream)
        return out

    def _streams(self, group: str, job: str) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": f"{job}/"}
        while True:
            try:
                page = self._logs.describe_log_streams(**kwargs)
            except Exception as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return []  # no log group yet: nothing has run
                raise BackendError(f"cannot list the log streams of {job} in {group}: "
                                   f"{exc}") from exc
            names += [s["logStreamName"] for s in page.get("logStreams", [])]
            if not page.get("nextToken"):
                return sorted(names)
            kwargs["nextToken"] = page["nextToken"]

    def _events(self, group: str, stream: str) -> str:
        lines: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream,
                                  "startFromHead": True}
        while True:
            try:
                page = self._logs.get_log_events(**kwargs)
            except Exception as exc:
                raise BackendError(f"cannot read log stream {stream} of {group}: {exc}") \
                    from exc
            lines += [event["message"] for event in page.get("events", [])]
            token = page.get("nextForwardToken")
            if not page.get("events") or token == kwargs.get("nextToken"):
                return "".join(f"{line}\n" for line in lines)
            kwargs["nextToken"] = token

    # -- stop -----------------------------------------------------------------

    def stop(self, handle: SageMakerHandle) -> None:
        """StopTrainingJob / StopProcessingJob (SIGTERM, SIGKILL after a grace)."""
        try:
            handle.job.stop()
            log.info("stage %s: stopping sagemaker job %s", handle.task.stage, handle.ref)
        except Exception as exc:
            # A job that already ended cannot be stopped: nothing left to do.
            if error_code(exc) == "ValidationException":
                return
            raise BackendError(f"cannot stop {handle.kind} job {handle.ref}: {exc}") from exc


def _already_exists(exc: BaseException) -> bool:
    code = error_code(exc)
    return code == "ResourceInUse" or (code == "ValidationException" and bool(
        re.search(r"already exists|must be unique", str(exc), re.IGNORECASE)))


BACKEND = SageMakerBackend
