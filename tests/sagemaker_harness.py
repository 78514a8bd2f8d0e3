"""A SageMaker stand-in for tests: the API on loopback, the jobs run by podman.

moto records SageMaker requests but runs nothing (every job is Completed at
creation) and cannot stop a training job, so `SageMakerHarness` plays
SageMaker itself. It speaks the JSON 1.1 protocol of the API subset the
backend uses (Create/Describe/Stop/List for Training and Processing Jobs),
so the unmodified SDK talks to it through `AWS_ENDPOINT_URL_SAGEMAKER`, and
runs each job's image under SageMaker's container contract:

- one container per instance (`algo-1`, `algo-2`, ...), non-root, read-only
  root filesystem, /opt/ml mounted writable, the job's Environment, and the
  storage credentials as the execution role would give them;
- Training Jobs: `/opt/ml/input/config/{hyperparameters,resourceconfig,
  inputdataconfig}.json`, the image run with the argument `train`,
  `/opt/ml/output/failure` read back into FailureReason, `/opt/ml/model`
  uploaded as `<S3OutputPath>/<job>/output/model.tar.gz`;
- Processing Jobs: `/opt/ml/config/{processingjobconfig,resourceconfig}.json`,
  the image's entrypoint (or ContainerEntrypoint) with ContainerArguments,
  `/opt/ml/output/message` read back into ExitMessage;
- statuses InProgress -> Completed / Failed / Stopped (Stopping on a stop),
  MaxRuntimeInSeconds enforced (SIGTERM, then SIGKILL after a grace), a
  container killed at its memory limit reported as SageMaker words it;
- each container's output copied, while it runs, into CloudWatch Logs on
  moto (`/aws/sagemaker/{Training,Processing}Jobs`, stream
  `<job>/algo-<n>-<epoch>`), where the backend reads it.

Faults a test can ask for: throttling of an action, a lost response to a
create (the job is made, the connection is dropped), a capacity error, a
spot interruption, a host terminated mid-run, a status nobody knows.
Instance memory comes from `instance_memory` (a test may make an instance
type small to provoke an out-of-memory kill).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3

ACCOUNT = "123456789012"
REGION = "us-east-1"
UID = "10001:10001"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
LOG_GROUPS = {"training": "/aws/sagemaker/TrainingJobs",
              "processing": "/aws/sagemaker/ProcessingJobs"}
CAPACITY_ERROR = ("CapacityError: Unable to provision requested ML compute capacity. "
                  "Please retry using a different ML instance type.")
OUT_OF_MEMORY = ("OutOfMemoryError: Please use an instance type with more memory, or reduce "
                 "the size of job data processed on an instance.")
SPOT_INTERRUPTED = "Spot instance was interrupted and the job could not resume"


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Job:
    """One job as the harness keeps it: the request, the state, the containers."""

    kind: str
    name: str
    request: dict[str, Any]
    status: str = "InProgress"
    secondary: str = "Starting"
    failure_reason: str = ""
    exit_message: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    modified: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    containers: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    model_uri: str = ""

    def set(self, status: str | None = None, secondary: str | None = None) -> None:
        if status is not None:
            self.status = status
        if secondary is not None:
            self.secondary = secondary
        self.modified = time.time()

    @property
    def instances(self) -> dict[str, Any]:
        if self.kind == "training":
            return dict(self.request["ResourceConfig"])
        return dict(self.request["ProcessingResources"]["ClusterConfig"])

    @property
    def arn(self) -> str:
        kind = "training-job" if self.kind == "training" else "processing-job"
        return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{self.name}"

    def describe(self) -> dict[str, Any]:
        """The Describe*Job response (timestamps as epoch seconds, as JSON 1.1 has them)."""
        r = self.request
        times = {k: v for k, v in (("CreationTime", self.created),
                                   ("LastModifiedTime", self.modified)) if v}
        if self.kind == "training":
            out = {**{k: r[k] for k in ("TrainingJobName", "RoleArn", "AlgorithmSpecification",
                                        "ResourceConfig", "StoppingCondition",
                                        "OutputDataConfig") if k in r},
                   **{k: r[k] for k in ("HyperParameters", "Environment", "VpcConfig",
                                        "EnableManagedSpotTraining", "CheckpointConfig")
                      if k in r},
                   "TrainingJobArn": self.arn, "TrainingJobStatus": self.status,
                   "SecondaryStatus": self.secondary,
                   "ModelArtifacts": {"S3ModelArtifacts": self.model_uri}, **times}
            if self.started:
                out["TrainingStartTime"] = self.started
            if self.ended:
                out["TrainingEndTime"] = self.ended
        else:
            out = {**{k: r[k] for k in ("ProcessingJobName", "RoleArn", "AppSpecification",
                                        "ProcessingResources", "StoppingCondition") if k in r},
                   **{k: r[k] for k in ("Environment", "NetworkConfig") if k in r},
                   "ProcessingJobArn": self.arn, "ProcessingJobStatus": self.status, **times}
            if self.started:
                out["ProcessingStartTime"] = self.started
            if self.ended:
                out["ProcessingEndTime"] = self.ended
            if self.exit_message:
                out["ExitMessage"] = self.exit_message
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        return out


class SageMakerHarness:
    """The SageMaker API on 127.0.0.1, running each job's containers with podman."""

    def __init__(self, workdir: Path, grace_seconds: int = 1,
                 instance_memory: dict[str, str] | None = None,
                 default_memory: str = "2g") -> None:
        self.workdir = workdir
        self.grace_seconds = grace_seconds
        self.instance_memory = dict(instance_memory or {})
        self.default_memory = default_memory
        self.jobs: dict[str, Job] = {}
        self.calls: Counter[str] = Counter()  # action -> requests seen (faults included)
        self.errors: list[BaseException] = []
        self._faults: dict[str, int] = Counter()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._logs = boto3.client("logs", region_name=REGION)
        self._s3 = boto3.client("s3", region_name=REGION)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._serving = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> SageMakerHarness:
        self._serving.start()
        return self

    def close(self) -> None:
        for job in self.jobs.values():
            job.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.server.shutdown()
        self.server.server_close()

    # -- faults ------------------------------------------------------------------

    def throttle(self, action: str, times: int = 1) -> None:
        """Answer the next `times` calls of `action` with ThrottlingException."""
        self._faults[f"throttle:{action}"] += times

    def lose_response(self, action: str) -> None:
        """Do the next `action`, then drop the connection instead of answering."""
        self._faults[f"lose:{action}"] += 1

    def capacity_error(self, times: int = 1) -> None:
        """Fail the next `times` jobs at start for want of capacity."""
        self._faults["capacity"] += times

    def interrupt_spot(self, kind: str = "training", times: int = 1) -> None:
        """Reclaim the instance of the next `times` jobs of `kind` once their stage started."""
        self._faults[f"spot:{kind}"] += times

    def terminate_host(self, job: str, host: str) -> None:
        """SIGTERM one host's container of job `job` once its stage has started (a worker
        terminated mid-run); the other hosts run on."""
        self._faults[f"term:{job}/{host}"] += 1

    def unknown_status(self, job: str, times: int = 1) -> None:
        """Describe job `job` the next `times` times with a status no SDK knows yet."""
        self._faults[f"unknown:{job}"] += times

    def pending_faults(self) -> dict[str, int]:
        """Faults asked for and not dealt out yet."""
        return {k: v for k, v in self._faults.items() if v}

    def _take(self, fault: str) -> bool:
        with self._lock:
            if self._faults[fault] > 0:
                self._faults[fault] -= 1
                return True
        return False

    # -- the API -------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        harness = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                harness.calls[action] += 1
                try:
                    if harness._take(f"throttle:{action}"):
                        raise ApiError("ThrottlingException", "Rate exceeded")
                    reply = harness.dispatch(action, json.loads(body or b"{}"))
                    if harness._take(f"lose:{action}"):
                        self.close_connection = True  # the job exists; the answer is lost
                        return
                    self._send(200, reply)
                except ApiError as exc:
                    self._send(exc.status, {"__type": exc.code, "message": exc.message})
                except Exception as exc:
                    harness.errors.append(exc)
                    self._send(500, {"__type": "InternalFailure", "message": str(exc)})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", os.urandom(8).hex())
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def dispatch(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = "training" if "TrainingJob" in action else "processing"
        key = "TrainingJobName" if kind == "training" else "ProcessingJobName"
        if action.startswith("Create"):
            return self._create(kind, body[key], body)
        if action.startswith("List"):
            jobs = sorted((j for j in self.jobs.values() if j.kind == kind),
                          key=lambda j: j.created, reverse=True)
            summaries = [{key: j.name, f"{key[:-4]}Arn": j.arn, "CreationTime": j.created,
                          f"{key[:-4]}Status": j.status} for j in jobs]
            return {f"{key[:-4]}Summaries": summaries}
        job = self.jobs.get(body.get(key, ""))
        if job is None or job.kind != kind:
            raise ApiError("ValidationException", f"Requested resource not found: "
                           f"{body.get(key)}", 400)
        if action.startswith("Describe"):
            if self._take(f"unknown:{job.name}"):
                status = "TrainingJobStatus" if kind == "training" else "ProcessingJobStatus"
                return {**job.describe(), status: "Paused", "SecondaryStatus": "Hibernating"}
            return job.describe()
        if action.startswith("Stop"):
            if job.status != "InProgress":
                raise ApiError("ValidationException", f"The job {job.name} is not in progress "
                               f"(status {job.status})")
            job.set("Stopping", "Stopping")
            job.stop.set()
            return {}
        raise ApiError("UnknownOperationException", f"{action} is not served by the harness")

    def _create(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if name in self.jobs:
                raise ApiError("ResourceInUse", f"Job name {name!r} must be unique within an "
                               "AWS account and region, and a job with this name already "
                               "exists")
            job = self.jobs[name] = Job(kind, name, body)
        thread = threading.Thread(target=self._guard, args=(job,), daemon=True)
        self._threads.append(thread)
        thread.start()
        return {"TrainingJobArn" if kind == "training" else "ProcessingJobArn": job.arn}

    # -- running a job ---------------------------------------------------------------

    def _guard(self, job: Job) -> None:
        try:
            self._run(job)
        except BaseException as exc:
            self.errors.append(exc)
            job.failure_reason = f"InternalServerError: {exc}"
            job.set("Failed", "Failed")

    def _run(self, job: Job) -> None:
        time.sleep(0.2)  # Starting: a describe sees the job pending first
        if self._take("capacity"):
            job.failure_reason = CAPACITY_ERROR
            job.ended = time.time()
            job.set("Failed", "Failed")
            return
        count = int(job.instances["InstanceCount"])
        hosts = [f"algo-{i + 1}" for i in range(count)]
        folders = [self._opt_ml(job, host, hosts) for host in hosts]
        job.set(secondary="Downloading")
        for host, folder in zip(hosts, folders, strict=True):
            started = self._podman(*self._run_args(job, host, folder), check=False)
            if started.returncode != 0:
                for ctr in job.containers:
                    self._podman("rm", "--force", ctr, check=False)
                job.failure_reason = (f"ClientError: Cannot start container: "
                                      f"{started.stderr.strip()[-300:]}")
                job.ended = time.time()
                job.set("Failed", "Failed")
                return
            job.containers.append(f"{job.name}-{host}")
        job.started = time.time()
        job.set(secondary="Training" if job.kind == "training" else None)
        ended = self._follow(job, hosts)
        self._finish(job, ended, folders)
        for ctr in job.containers:
            self._podman("rm", "--force", ctr, check=False)

    def _opt_ml(self, job: Job, host: str, hosts: list[str]) -> Path:
        """This host's /opt/ml with the configuration SageMaker writes."""
        root = self.workdir / job.name / host
        resource = {"current_host": host, "hosts": hosts, "network_interface_name": "eth0",
                    "current_instance_type": job.instances["InstanceType"]}
        if job.kind == "training":
            config = root / "input" / "config"
            files = {"hyperparameters.json": job.request.get("HyperParameters") or {},
                     "resourceconfig.json": resource, "inputdataconfig.json": {}}
            dirs = [root / "output", root / "model", root / "checkpoints", root / "input/data"]
        else:
            config = root / "config"
            files = {"processingjobconfig.json": {k: v for k, v in job.request.items()
                                                  if k != "Tags"},
                     "resourceconfig.json": resource}
            dirs = [root / "output"]
        config.mkdir(parents=True)
        for name, content in files.items():
            (config / name).write_text(json.dumps(content))
        for folder in dirs:
            folder.mkdir(parents=True, exist_ok=True)
        for path in (root, *root.rglob("*")):  # the container's user owns /opt/ml
            os.chown(path, 10001, 10001)
        return root

    def _run_args(self, job: Job, host: str, folder: Path) -> list[str]:
        memory = self.instance_memory.get(job.instances["InstanceType"], self.default_memory)
        env = [arg for k, v in sorted((job.request.get("Environment") or {}).items())
               for arg in ("--env", f"{k}={v}")]
        # What the execution role gives a real job: credentials for storage.
        env += [arg for k in CREDENTIALS if k in os.environ for arg in ("--env", k)]
        if self._faults[f"term:{job.name}/{host}"] > 0:
            # Hold the stage once it has started until the SIGTERM comes, so a
            # small shard cannot finish before the harness reads "starting".
            env += ["--env", "BATCHLINE_HOLD=stage-started:/tmp/batchline-held"]
        args = ["run", "--detach", "--name", f"{job.name}-{host}", "--pull", "never",
                "--read-only", "--tmpfs", "/tmp:rw,size=512m,mode=1777",
                "--user", UID, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--network", "host", "--memory", memory, "--memory-swap", memory,
                "--volume", f"{folder}:/opt/ml:rw", *env]
        if job.kind == "training":
            return [*args, job.request["AlgorithmSpecification"]["TrainingImage"], "train"]
        app = job.request["AppSpecification"]
        if app.get("ContainerEntrypoint"):
            args += ["--entrypoint", json.dumps(app["ContainerEntrypoint"])]
        return [*args, app["ImageUri"], *app.get("ContainerArguments", [])]

    def _follow(self, job: Job, hosts: list[str]) -> str:
        """Wait for every container, copying logs; stop them on a stop, at MaxRuntime, or
        (spot fault) once the stage started. How it ended: exited, stopped, deadline, spot."""
        limit = job.request["StoppingCondition"]["MaxRuntimeInSeconds"]
        deadline = (job.started or time.time()) + limit
        spot = self._take(f"spot:{job.kind}")
        streams = {host: f"{job.name}/{host}-{int(time.time())}" for host in hosts}
        sent = dict.fromkeys(hosts, 0)
        ended = "exited"
        while True:
            running = [ctr for ctr in job.containers if self._running(ctr)]
            texts = {h: self._copy_logs(job, h, streams[h], sent) for h in hosts}
            if not running:
                return ended
            reason = ""
            if ended == "exited":
                if job.stop.is_set():
                    reason = "stopped"
                elif time.time() >= deadline:
                    reason = "deadline"
                elif spot and any("starting" in t for t in texts.values()):
                    reason = "spot"
            for host in hosts:
                if "starting" in texts[host] and self._take(f"term:{job.name}/{host}"):
                    self._podman("kill", "--signal", "TERM", f"{job.name}-{host}", check=False)
            if reason:
                ended = reason
                signal = ["kill"] if reason == "spot" else ["stop", "--time",
                                                            str(self.grace_seconds)]
                for ctr in running:
                    self._podman(*signal, ctr, check=False)
            time.sleep(0.3)

    def _finish(self, job: Job, ended: str, folders: list[Path]) -> None:
        codes = [self._exit_code(ctr) for ctr in job.containers]
        job.exit_codes = codes
        job.ended = time.time()
        if ended == "stopped":
            job.set("Stopped", "Stopped")
            return
        if ended == "deadline":
            limit = job.request["StoppingCondition"]["MaxRuntimeInSeconds"]
            if job.kind == "processing":
                job.failure_reason = f"Processing job exceeded MaxRuntimeInSeconds ({limit})"
            job.set("Stopped", "MaxRuntimeExceeded")
            return
        if ended == "spot":
            job.failure_reason = SPOT_INTERRUPTED
            job.set("Failed", "Interrupted")
            return
        failed = [(code, folder) for code, folder, ctr in
                  zip(codes, folders, job.containers, strict=True) if code != 0]
        if not failed:
            if job.kind == "training":
                job.model_uri = self._upload_model(job, folders[0] / "model")
            job.set("Completed", "Completed")
            return
        code, folder = failed[0]
        if code == 137 or any(self._oom_killed(c) for c in job.containers):
            job.failure_reason = OUT_OF_MEMORY
        elif job.kind == "training":
            failure = folder / "output" / "failure"
            text = failure.read_text()[:1024] if failure.exists() else ""
            job.failure_reason = f"AlgorithmError: {text or f', exit code: {code}'}"
        else:
            message = folder / "output" / "message"
            job.exit_message = message.read_text()[:1024] if message.exists() else ""
            job.failure_reason = "AlgorithmError: See job logs for more information"
        job.set("Failed", "Failed")

    def _upload_model(self, job: Job, model: Path) -> str:
        """/opt/ml/model as model.tar.gz under the job's S3OutputPath, as SageMaker keeps it."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(model.iterdir()):
                tar.add(path, arcname=path.name)
        prefix = job.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        uri = f"{prefix}/{job.name}/output/model.tar.gz"
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self._s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        return uri

    # -- logs and podman -------------------------------------------------------------

    def _copy_logs(self, job: Job, host: str, stream: str, sent: dict[str, int]) -> str:
        """Copy the container's new lines to CloudWatch Logs; returns its whole output."""
        out = self._podman("logs", f"{job.name}-{host}", check=False, merge=True).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        fresh = lines[sent[host]:]
        if fresh:
            group = LOG_GROUPS[job.kind]
            if sent[host] == 0:
                exists = self._logs.exceptions.ResourceAlreadyExistsException
                with contextlib.suppress(exists):
                    self._logs.create_log_group(logGroupName=group)
                self._logs.create_log_stream(logGroupName=group, logStreamName=stream)
            now = int(time.time() * 1000)
            self._logs.put_log_events(logGroupName=group, logStreamName=stream,
                                      logEvents=[{"timestamp": now, "message": line}
                                                 for line in fresh])
            sent[host] = len(lines)
        return out

    def _running(self, ctr: str) -> bool:
        state = self._podman("inspect", "--format", "{{.State.Running}}", ctr, check=False)
        return state.stdout.strip() == "true"

    def _exit_code(self, ctr: str) -> int:
        out = self._podman("inspect", "--format", "{{.State.ExitCode}}", ctr, check=False)
        return int(out.stdout.strip() or 1)

    def _oom_killed(self, ctr: str) -> bool:
        out = self._podman("inspect", "--format", "{{.State.OOMKilled}}", ctr, check=False)
        return out.stdout.strip() == "true"

    def _podman(self, *args: str, check: bool = True, merge: bool = False
                ) -> subprocess.CompletedProcess[str]:
        # From the harness's own folder: on cgroup v1, conmon drops an `oom`
        # marker file into its caller's working directory.
        return subprocess.run(["podman", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                              text=True, check=check, timeout=600, cwd=self.workdir)
