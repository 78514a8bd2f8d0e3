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
import time
from pathlib import Path

from batchline import layout, storage
from batchline.backends.base import Handle, OnEvent, last_error, log_tail
from batchline.errors import BackendError
from batchline.task import Cause, StageResult, StageTask

log = logging.getLogger(__name__)
# Variables forwarded by name when set in the launcher's environment.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "BATCHLINE_LOG_LEVEL")
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
ENGINE_MISSING = 125  # podman/docker's own exit code when it could not start the container


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("2Gi", "512M") as bytes."""
    match = _QUANTITY.match(quantity)
    if not match:
        raise BackendError(f"invalid memory quantity {quantity!r}")
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def cpus(quantity: str) -> str:
    """A Kubernetes CPU quantity ("500m", "2") as a --cpus value."""
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


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
    source = str(task.params.get("source", ""))
    if source and is_local(source):
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


class ContainerBackend:
    """Runs stages as local containers (podman or docker)."""

    name = "container"
    fans_out_shards = False

    def __init__(self, engine: str | None = None, network: str = "host",
                 user: str = "10001:10001", tmpfs_size: str = "2g",
                 poll_seconds: float = 0.2, grace_seconds: int = 10) -> None:
        self.engine = find_engine(engine)
        self.grace_seconds = grace_seconds  # `stop --time`: SIGTERM, then SIGKILL
        self.network = network
        self.user = user
        self.tmpfs_size = tmpfs_size
        self.poll_seconds = poll_seconds
        # podman's conmon (cgroup v1) drops an `oom` marker file into the
        # caller's working directory when a container is OOM-killed; run the
        # engine from a private folder so the user's directory stays clean.
        # A TemporaryDirectory is removed when the backend is (or at exit).
        self._workdir = tempfile.TemporaryDirectory(prefix="batchline-container-")
        self._cwd = self._workdir.name

    def command(self, task: StageTask, container: str) -> list[str]:
        """The full `run` command line (values of secrets never appear in it)."""
        env = [arg for name in FORWARDED_ENV if name in os.environ for arg in ("--env", name)]
        return [
            # --init: python as PID 1 would ignore SIGTERM, so `stop` (cancel) would
            # wait out its grace period while the stage runs on and commits.
            self.engine, "run", "--detach", "--init", "--pull", "never", "--name", container,
            "--read-only", "--tmpfs", f"/tmp:rw,size={self.tmpfs_size},mode=1777",  # noqa: S108
            *self.user_args(task), "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", self.network,
            "--memory", str(memory_bytes(task.resources.memory)), "--memory-swap",
            str(memory_bytes(task.resources.memory)), "--cpus", cpus(task.resources.cpu),
            "--label", f"batchline.dev/run-id={task.run_id}",
            "--label", f"batchline.dev/stage={task.stage}",
            *env, *local_mounts(task),
            task.image, task.stage, "--task", task.task_uri,
        ]

    def user_args(self, task: StageTask) -> list[str]:
        return run_as(self.engine, self.user, task.storage_root, os.geteuid(), os.getegid())

    def grant_outputs(self, task: StageTask) -> None:
        """Local storage as root: hand this stage's output folders (only those) to the
        container's user, who may write nothing else on the host."""
        if not is_local(task.storage_root) or os.geteuid() != 0:
            return
        uid, gid = (int(part) for part in self.user.split(":"))
        for uri in task.outputs.values():
            top = Path(storage.resolve(uri)[1])
            top.mkdir(parents=True, exist_ok=True)
            for path in (top, *top.rglob("*")):
                os.chown(path, uid, gid, follow_symlinks=False)

    def _engine(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.engine, *args], capture_output=True, text=True, check=False,
                              cwd=self._cwd, timeout=timeout)

    def submit(self, task: StageTask) -> Handle:
        container = f"{task.name}-a{task.attempt}-{secrets.token_hex(3)}"
        self.grant_outputs(task)
        command = self.command(task, container)
        # Safe to log: credentials travel by name (`--env NAME`), never by value.
        log.debug("stage %s: %s", task.stage, shlex.join(command))
        started = subprocess.run(command, capture_output=True, text=True, check=False,
                                 cwd=self._cwd, timeout=300)
        deadline = time.monotonic() + task.resources.timeout_seconds
        handle = Handle(task, container, {"start_error": "", "deadline": deadline})
        if started.returncode != 0:
            handle.extra["start_error"] = started.stderr.strip() or started.stdout.strip()
        else:
            log.info("stage %s: running in %s as container %s", task.stage, self.engine,
                     container)
        return handle

    def wait(self, handle: Handle, on_event: OnEvent | None = None) -> StageResult:
        if "result" in handle.extra:  # already collected (cancel() of an unwatched container)
            result: StageResult = handle.extra["result"]
            return result
        if handle.extra["start_error"]:
            return self._start_failure(handle)
        handle.extra["waiting"] = True
        try:
            self._announce(handle, on_event)
            self._wait_for_exit(handle)
            state = self._state(handle)
            text = self._collect_logs(handle)
        finally:  # whatever happened above, leave no container behind
            self._engine("rm", "--force", handle.ref)
        code = int(str(state.get("ExitCode", 1)))
        result = self._translate(handle, code, bool(state.get("OOMKilled")), text)
        handle.extra["result"] = result
        return result

    def _wait_for_exit(self, handle: Handle) -> None:
        """Block until the container exits, stopping it at the task's deadline.

        `wait` runs in slices so the deadline is checked even while the
        engine blocks; a failed `wait` (an engine hiccup) falls back to polling.
        """
        while True:
            remaining = handle.extra["deadline"] - time.monotonic()
            if remaining <= 0:
                if self._state(handle).get("Running"):
                    # As Kubernetes' activeDeadlineSeconds: stop it, report DEADLINE.
                    handle.extra["timed_out"] = True
                    self._engine("stop", "--time", str(self.grace_seconds), handle.ref)
                return
            try:
                waited = self._engine("wait", handle.ref, timeout=min(remaining, 30.0))
            except subprocess.TimeoutExpired:
                continue
            if waited.returncode == 0 or not self._state(handle).get("Running"):
                return
            time.sleep(self.poll_seconds)

    def _announce(self, handle: Handle, on_event: OnEvent | None) -> None:
        """Report "pending" until the engine says the process started, then "running"."""
        if on_event is None:
            return
        on_event(handle.task, "pending")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self._state(handle)
            # A container that already exited did start: report running before its end.
            if state.get("Running") or state.get("Status") in ("exited", "stopped", None):
                break
            time.sleep(self.poll_seconds)
        on_event(handle.task, "running")

    def _collect_logs(self, handle: Handle) -> str:
        """The container's combined output, kept in storage before the container goes."""
        text = subprocess.run([self.engine, "logs", handle.ref], stdout=subprocess.PIPE,
                              cwd=self._cwd,
                              stderr=subprocess.STDOUT, text=True, check=False,
                              timeout=120).stdout
        handle.extra["logs"] = text
        self._save_logs(handle.task, text)
        return text

    def _translate(self, handle: Handle, code: int, oom_killed: bool, text: str) -> StageResult:
        """The engine's end state as a StageResult; 137 is the kernel's OOM kill here."""
        task = handle.task
        if handle.extra.get("cancelled"):
            cause = Cause.CANCELLED
        elif handle.extra.get("timed_out"):
            cause = Cause.DEADLINE
        elif oom_killed or code == 137:
            cause = Cause.OUT_OF_MEMORY
        else:
            cause = Cause.from_exit_code(code)
        message = last_error(text)
        if cause is Cause.OUT_OF_MEMORY:
            advice = StageResult(task.stage, cause, code).advice()
            message = (f"container {handle.ref} was killed at its memory limit of "
                       f"{task.resources.memory} (exit {code}); {advice}")
        elif cause is Cause.DEADLINE:
            message = (f"container {handle.ref} ran past its timeout of "
                       f"{task.resources.timeout_seconds} s and was stopped (exit {code})")
        elif cause is Cause.USER_ERROR:
            message = f"exit {code}: {message}" if message else f"exit {code}"
        return StageResult(task.stage, cause, code, message, log_tail(text), handle.ref)

    def _start_failure(self, handle: Handle) -> StageResult:
        error = handle.extra["start_error"]
        task = handle.task
        self._save_logs(task, error)
        if re.search(r"image not known|no such image|unable to find image|pull access denied",
                     error, re.IGNORECASE):
            return StageResult(task.stage, Cause.IMAGE_PULL, ENGINE_MISSING,
                               f"image {task.image} is not available to {self.engine}; build it "
                               "with `make images` or set image_registry/image_tag in the spec",
                               error, handle.ref)
        raise BackendError(f"{self.engine} could not start stage {task.stage}: {error}")

    def _state(self, handle: Handle) -> dict[str, object]:
        inspected = self._engine("inspect", "--format", "{{json .State}}", handle.ref)
        try:
            state: dict[str, object] = json.loads(inspected.stdout or "{}")
        except ValueError:
            return {}
        return state

    def _save_logs(self, task: StageTask, text: str) -> None:
        shard = task.shard_index if task.shard_count > 1 else None
        storage.write_text(layout.log_uri(task.storage_root, task.run_id, task.stage,
                                          task.attempt, shard), text)

    def logs(self, handle: Handle) -> str:
        if "logs" in handle.extra:
            return str(handle.extra["logs"])
        return subprocess.run([self.engine, "logs", handle.ref], stdout=subprocess.PIPE,
                              cwd=self._cwd,
                              stderr=subprocess.STDOUT, text=True, check=False,
                              timeout=120).stdout

    def cancel(self, handle: Handle) -> None:
        """Stop the container; remove it too unless a wait() is collecting it."""
        if "result" in handle.extra or handle.extra["start_error"]:
            return
        handle.extra["cancelled"] = True
        self._engine("stop", "--time", str(self.grace_seconds), handle.ref)
        if not handle.extra.get("waiting"):
            self.wait(handle)  # keeps its logs in storage, then removes it
