"""Local backend: each stage in its own subprocess, the very command images run."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from batchline import cpu
from batchline.backends.base import Backend, BackendOptions, Handle, Outcome, Phase
from batchline.task import StageTask

log = logging.getLogger(__name__)


class Options(BackendOptions):
    poll_seconds: float = Field(0.05, gt=0, le=60)
    grace_seconds: float = Field(10.0, ge=0, le=600, description="between SIGTERM and SIGKILL")


@dataclass
class LocalHandle(Handle):
    proc: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None


def stage_command(task: StageTask) -> list[str]:
    return [sys.executable, "-m", "batchline.stage", task.stage, "--task", task.task_uri]


class LocalBackend(Backend[LocalHandle]):
    """Runs stages as child processes of the launcher (development and CI)."""

    name = "local"

    def __init__(self, options: Options | None = None, **fields: float) -> None:
        self.options = options or Options(**fields)
        self.poll_seconds = self.options.poll_seconds
        # Stage output lands here first, then is copied to storage; the folder
        # is removed with the backend (or at exit).
        self._tmp = tempfile.TemporaryDirectory(prefix="batchline-local-")
        self._logdir = Path(self._tmp.name)

    def start(self, task: StageTask) -> LocalHandle:
        logfile = self._logdir / f"{task.name}-a{task.attempt}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if task.shard is not None and task.shard_count > 1:
            # The launcher starts every shard at once here: they share this host's CPU.
            env[cpu.WORKERS_ENV] = cpu.workers_with_shards(task.shard_count, os.environ)
        with open(logfile, "wb") as sink:
            # Same process group as the launcher: Ctrl-C, or a kill of the
            # launcher's group, reaches the stage too instead of orphaning it.
            proc = subprocess.Popen(stage_command(task), stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env=env)
        log.info("stage %s: running locally as pid %d", task.stage, proc.pid)
        return LocalHandle(task, f"pid {proc.pid}", proc=proc, logfile=logfile)

    def poll(self, handle: LocalHandle, timeout: float) -> Outcome | Phase:
        assert handle.proc is not None
        try:
            code = handle.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return "running"
        # A signal death (negative) is reported as the shell would: 128 + signal.
        return Outcome(exit_code=128 - code if code < 0 else code)

    def fetch_logs(self, handle: LocalHandle) -> dict[int | None, str]:
        path = handle.logfile
        text = path.read_text(errors="replace") if path and path.exists() else ""
        return {handle.task.shard: text}

    def stop(self, handle: LocalHandle) -> None:
        """SIGTERM, then SIGKILL after the grace period (a stage in C code may not listen)."""
        proc = handle.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.options.grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def release(self, handle: LocalHandle, outcome: Outcome) -> None:
        if handle.logfile is not None:
            handle.logfile.unlink(missing_ok=True)


BACKEND = LocalBackend
