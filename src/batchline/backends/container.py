"""Container backend: each stage in its own image with `podman run` or `docker run`.

The container runs the image's ENTRYPOINT (`python -m batchline.stage`) with
`<stage> --task <uri>`, as a non-root user on a read-only root filesystem
with a tmpfs on /tmp, no capabilities and the task's memory and CPU limits.
Storage endpoint and credentials reach it through the environment, passed by
name only (`--env NAME`), so their values are never on a command line, in an
image or in a log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from batchline import storage
from batchline.backends.base import Backend, BackendOptions, Handle, Outcome, Phase
from batchline.causes import Cause
from batchline.errors import BackendError
from batchline.quantity import cpu_cores, memory_bytes
from batchline.task import StageTask

log = logging.getLogger(__name__)
# Variables forwarded by name when set in the launcher's environment.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "BATCHLINE_LOG_LEVEL")
ENGINE_MISSING = 125  # podman/docker's own exit code when it could not start the container
_IMAGE_MISSING = re.compile(r"image not known|no such image|unable to find image|"
                            r"pull access denied", re.IGNORECASE)


class Options(BackendOptions):
    engine: str | None = Field(None, description="podman or docker (default: whichever is "
                               "on PATH, podman first)")
    network: str = "host"
    user: str = Field("10001:10001", pattern=r"^[0-9]+:[0-9]+$")
    tmpfs_size: str = Field("2g", pattern=r"^[0-9]+[kmg]?$")
    poll_seconds: float = Field(0.5, gt=0, le=60)
    grace_seconds: int = Field(10, ge=0, le=600, description="`stop --time`")


@dataclass
class ContainerHandle(Handle):
    start_error: str = ""


def cpus(quantity: str) -> str:
    """A Kubernetes CPU quantity ("500m", "2") as a --cpus value."""
    return f"{cpu_cores(quantity):g}"


def find_engine(preferred: str | None = None) -> str:
    """The container engine to use: `preferred` if given, else podman, else docker."""
    for name in ([preferred] if preferred else ["podman", "docker"]):
        if shutil.which(name):
            return name
    raise BackendError("the container backend needs podman or docker on PATH; install one "
                       "(Debian: make podman)")


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_mounts(task: StageTask) -> list[str]:
    """Bind mounts that keep local URIs valid inside the container (same paths)."""
    mounts = []
    if is_local(task.storage_root):
        root = storage.resolve(task.storage_root)[1]
        mounts += ["--volume", f"{root}:{root}:rw"]
    for source in task.sources:
        if is_local(source):
            path = storage.resolve(source)[1]
            folder = path if os.path.isdir(path) else os.path.dirname(path)
            mounts += ["--volume", f"{folder}:{folder}:ro"]
    return mounts


def run_as(engine: str, image_user: str, storage_root: str, uid: int, gid: int) -> list[str]:
    """Who a stage runs as: always a non-root uid.

    The image's user (10001) by default. A caller who is not root and keeps
    storage in a local folder gets the stage run as themselves instead, so the
    files it writes are theirs (rootless podman maps their uid with keep-id).
    """
    if not is_local(storage_root) or uid == 0:
        return ["--user", image_user]
    args = ["--user", f"{uid}:{gid}"]
    if os.path.basename(engine) == "podman":
        args += ["--userns", "keep-id"]
    return args


class ContainerBackend(Backend[ContainerHandle]):
    """Runs stages as local containers (podman or docker)."""

    name = "container"

    def __init__(self, options: Options | None = None, **fields: Any) -> None:
        self.options = options or Options(**fields)
        self.engine = find_engine(self.options.engine)
        self.poll_seconds = self.options.poll_seconds
        # podman's conmon (cgroup v1) drops an `oom` marker file into the
        # caller's working directory when a container is OOM-killed; run the
        # engine from a private folder so the user's directory stays clean.
        # A TemporaryDirectory is removed when the backend is (or at exit).
        self._workdir = tempfile.TemporaryDirectory(prefix="batchline-container-")
        self._cwd = self._workdir.name

    def command(self, task: StageTask, container: str) -> list[str]:
        """The full `run` command line (values of secrets never appear in it)."""
        env = [arg for name in FORWARDED_ENV if name in os.environ for arg in ("--env", name)]
        memory = str(memory_bytes(task.resources.memory))
        return [
            # --init: python as PID 1 would ignore SIGTERM, so `stop` (cancel) would
            # wait out its grace period while the stage runs on and commits.
            self.engine, "run", "--detach", "--init", "--pull", "never", "--name", container,
            "--read-only", "--tmpfs",
            f"/tmp:rw,size={self.options.tmpfs_size},mode=1777",  # noqa: S108
            *self.user_args(task), "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", self.options.network,
            "--memory", memory, "--memory-swap", memory, "--cpus", cpus(task.resources.cpu),
            "--label", f"batchline.dev/run-id={task.run_id}",
            "--label", f"batchline.dev/stage={task.stage}",
            *env, *local_mounts(task),
            task.image, task.stage, "--task", task.task_uri,
        ]

    def user_args(self, task: StageTask) -> list[str]:
        return run_as(self.engine, self.options.user, task.storage_root, os.geteuid(),
                      os.getegid())

    def grant_outputs(self, task: StageTask) -> None:
        """Local storage as root: hand this stage's output folders (only those) to the
        container's user, who may write nothing else on the host."""
        if not is_local(task.storage_root) or os.geteuid() != 0:
            return
        uid, gid = (int(part) for part in self.options.user.split(":"))
        for name in task.outputs:
            top = Path(storage.resolve(task.output_uri(name))[1])
            top.mkdir(parents=True, exist_ok=True)
            for path in (top, *top.rglob("*")):
                os.chown(path, uid, gid, follow_symlinks=False)

    def _engine(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.engine, *args], capture_output=True, text=True, check=False,
                              cwd=self._cwd, timeout=timeout)

    def start(self, task: StageTask) -> ContainerHandle:
        container = f"{task.name}-a{task.attempt}-{secrets.token_hex(3)}"
        self.grant_outputs(task)
        command = self.command(task, container)
        # Safe to log: credentials travel by name (`--env NAME`), never by value.
        log.debug("stage %s: %s", task.stage, shlex.join(command))
        started = subprocess.run(command, capture_output=True, text=True, check=False,
                                 cwd=self._cwd, timeout=300)
        handle = ContainerHandle(task, container)
        if started.returncode != 0:
            handle.start_error = started.stderr.strip() or started.stdout.strip()
            if not _IMAGE_MISSING.search(handle.start_error):
                raise BackendError(f"{self.engine} could not start stage {task.stage}: "
                                   f"{handle.start_error}")
        else:
            log.info("stage %s: running in %s as container %s", task.stage, self.engine,
                     container)
        return handle

    def poll(self, handle: ContainerHandle, timeout: float) -> Outcome | Phase:
        if handle.start_error:
            return Outcome(ENGINE_MISSING, cause=Cause.IMAGE_PULL, message=(
                f"image {handle.task.image} is not available to {self.engine}; build it "
                "with `make images` or set image_registry/image_tag in the spec"))
        state = self._state(handle)
        if not state:
            return Outcome(None, message=f"container {handle.ref} is gone")
        if state.get("Running") or state.get("Status") in ("created", "configured",
                                                           "initialized"):
            try:  # `wait` blocks in the engine until the container ends, or the slice does
                self._engine("wait", handle.ref, timeout=max(timeout, 0.5))
            except subprocess.TimeoutExpired:
                return "running" if state.get("Running") else "pending"
            state = self._state(handle)
            if state.get("Running"):
                return "running"
        # cgroup v1 podman may not see the OOM kill; then exit 137 alone says it.
        oom = True if state.get("OOMKilled") else None
        return Outcome(int(str(state.get("ExitCode", 1))), oom_killed=oom)

    def fetch_logs(self, handle: ContainerHandle) -> dict[int | None, str]:
        if handle.start_error:
            return {handle.task.shard: handle.start_error}
        if handle.result is not None:  # removed after wait(): the stored copy is the log
            return {}
        text = subprocess.run([self.engine, "logs", handle.ref], stdout=subprocess.PIPE,
                              cwd=self._cwd, stderr=subprocess.STDOUT, text=True, check=False,
                              timeout=120).stdout
        return {handle.task.shard: text}

    def stop(self, handle: ContainerHandle) -> None:
        if not handle.start_error:
            self._engine("stop", "--time", str(self.options.grace_seconds), handle.ref,
                         timeout=self.options.grace_seconds + 60)

    def release(self, handle: ContainerHandle, outcome: Outcome) -> None:
        if not handle.start_error:  # whatever happened, leave no container behind
            self._engine("rm", "--force", handle.ref)

    def _state(self, handle: ContainerHandle) -> dict[str, object]:
        inspected = self._engine("inspect", "--format", "{{json .State}}", handle.ref)
        try:
            state: dict[str, object] = json.loads(inspected.stdout or "{}")
        except ValueError:
            return {}
        return state


BACKEND = ContainerBackend
