"""Local backend: each stage in its own subprocess, the very command images run."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchline import layout, storage
from batchline.backends.base import Handle, OnEvent, last_error, log_tail
from batchline.task import Cause, StageResult, StageTask

log = logging.getLogger(__name__)


def stage_command(task: StageTask) -> list[str]:
    return [sys.executable, "-m", "batchline.stage", task.stage, "--task", task.task_uri]


class LocalBackend:
    """Runs stages as child processes of the launcher (development and CI)."""

    name = "local"
    fans_out_shards = False

    def __init__(self, poll_seconds: float = 0.05, grace_seconds: float = 10.0) -> None:
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds  # between SIGTERM and SIGKILL
        # Stage output lands here first, then is copied to storage; the folder
        # is removed with the backend (or at exit).
        self._tmp = tempfile.TemporaryDirectory(prefix="batchline-local-")
        self._logdir = Path(self._tmp.name)

    def submit(self, task: StageTask) -> Handle:
        logfile = self._logdir / f"{task.name}-a{task.attempt}.log"
        with open(logfile, "wb") as sink:
            # Same process group as the launcher: Ctrl-C, or a kill of the
            # launcher's group, reaches the stage too instead of orphaning it.
            proc = subprocess.Popen(stage_command(task), stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.info("stage %s: running locally as pid %d", task.stage, proc.pid)
        deadline = time.monotonic() + task.resources.timeout_seconds
        return Handle(task, str(proc.pid), {"proc": proc, "logfile": logfile,
                                            "deadline": deadline})

    def wait(self, handle: Handle, on_event: OnEvent | None = None) -> StageResult:
        proc: subprocess.Popen[bytes] = handle.extra["proc"]
        if on_event:
            on_event(handle.task, "running")
        while proc.poll() is None:
            if time.monotonic() > handle.extra["deadline"]:
                # As Kubernetes' activeDeadlineSeconds: stop it, report DEADLINE.
                handle.extra["timed_out"] = True
                self._stop(proc)
                break
            time.sleep(self.poll_seconds)
        text = self.logs(handle)
        task = handle.task
        shard = task.shard_index if task.shard_count > 1 else None
        storage.write_text(layout.log_uri(task.storage_root, task.run_id, task.stage,
                                          task.attempt, shard), text)
        code = proc.returncode
        if code < 0:  # killed by a signal: report it as the shell would
            code = 128 - code
        message = last_error(text)
        if handle.extra.get("cancelled"):
            cause = Cause.CANCELLED
        elif handle.extra.get("timed_out"):
            cause = Cause.DEADLINE
            message = (f"stage {task.stage} ran past its timeout of "
                       f"{task.resources.timeout_seconds} s and was stopped (exit {code})")
        else:
            cause = Cause.from_exit_code(code)
        if cause is Cause.OUT_OF_MEMORY and code == 137 and "out of memory" not in text:
            # SIGKILL from outside (a person, a test) is not memory pressure.
            cause = Cause.USER_ERROR
        return StageResult(task.stage, cause, code, message, log_tail(text), handle.ref)

    def logs(self, handle: Handle) -> str:
        path: Path = handle.extra["logfile"]
        return path.read_text(errors="replace") if path.exists() else ""

    def cancel(self, handle: Handle) -> None:
        proc: subprocess.Popen[bytes] = handle.extra["proc"]
        if proc.poll() is not None:
            return
        handle.extra["cancelled"] = True
        self._stop(proc)

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, then SIGKILL after the grace period (a stage in C code may not listen)."""
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
