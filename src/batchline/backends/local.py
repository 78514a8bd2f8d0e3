"""Local backend: each stage in its own subprocess, the very command images run.

While a stage runs, the backend keeps one more stage process started ahead
(`python -m batchline.stage --standby`, see batchline.standby): the next
stage is handed to it on its stdin, so its interpreter start and imports
have already happened beside the stage before. When the launcher says which
stage comes next, the standby is prepared for it (its CPU policy fixed and
its module, LightGBM included, imported) and runs only that stage with that
CPU request. A standby runs one stage and exits; one whose environment would
differ from the stage's is not used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from batchline import cpu, standby
from batchline.backends.base import Backend, BackendOptions, Handle, Outcome, Phase
from batchline.task import StageTask

log = logging.getLogger(__name__)


class Options(BackendOptions):
    poll_seconds: float = Field(0.05, gt=0, le=60)
    grace_seconds: float = Field(10.0, ge=0, le=600, description="between SIGTERM and SIGKILL")
    warm: bool = Field(True, description="keep one stage process started and imported "
                       "ahead for the next stage")


@dataclass
class LocalHandle(Handle):
    proc: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None


def stage_arguments(task: StageTask) -> list[str]:
    return [task.stage, "--task", task.task_uri]


def stage_command(task: StageTask) -> list[str]:
    return [sys.executable, "-m", "batchline.stage", *stage_arguments(task)]


@dataclass
class _Standby:
    proc: subprocess.Popen[bytes]
    logfile: Path
    env: dict[str, str]
    prepared: standby.Prepared | None  # None: fit for any stage

    def fits(self, task: StageTask, env: dict[str, str]) -> bool:
        return self.env == env and (self.prepared is None or self.prepared.fits(
            task.stage, task.resources.cpu))


def _retire(spare: _Standby | None) -> None:
    """Close a standby's stdin: it exits without running anything."""
    if spare is not None and spare.proc.stdin is not None:
        with contextlib.suppress(OSError):
            spare.proc.stdin.close()


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
        self._standby: _Standby | None = None
        self._spawned = 0
        self._more = True  # until the launcher says no other stage follows
        # the stage it said may follow, to prepare the standby for (None: fit for any)
        self._prepare: standby.Prepared | None = None
        # A backend dropped without close() still lets its standby go.
        self._finalizer = weakref.finalize(self, _retire, None)

    def start(self, task: StageTask) -> LocalHandle:
        env = self._env(task)
        taken = self._take_standby(task, env)
        if taken is not None:
            proc, logfile = taken
        else:
            logfile = self._logdir / f"{task.name}-a{task.attempt}.log"
            proc = self._spawn(stage_command(task), env, logfile, stdin=subprocess.DEVNULL)
        log.info("stage %s: running locally as pid %d%s", task.stage, proc.pid,
                 " (started ahead)" if taken else "")
        if self.options.warm and self._more:
            self._keep_standby(self._prepare)
        return LocalHandle(task, f"pid {proc.pid}", proc=proc, logfile=logfile)

    def expect_next(self, stage: str | None, cpu: str | None = None) -> None:
        self._more = stage is not None
        self._prepare = None if stage is None else standby.Prepared(stage, cpu)

    def close(self) -> None:
        """Let the standby go (it exits on its closed stdin)."""
        spare, self._standby = self._standby, None
        _retire(spare)

    @staticmethod
    def _env(task: StageTask | None) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if task is not None and task.shard is not None and task.shard_count > 1:
            # The launcher starts every shard at once here: they share this host's CPU.
            env[cpu.WORKERS_ENV] = cpu.workers_with_shards(task.shard_count, os.environ)
        return env

    def _spawn(self, command: list[str], env: dict[str, str], logfile: Path,
               stdin: int) -> subprocess.Popen[bytes]:
        with open(logfile, "wb") as sink:
            # Same process group as the launcher: Ctrl-C, or a kill of the
            # launcher's group, reaches the stage too instead of orphaning it.
            return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=stdin, env=env)

    def _keep_standby(self, prepared: standby.Prepared | None = None) -> None:
        spare = self._standby
        if spare is not None and spare.proc.poll() is None and spare.prepared == prepared:
            return
        _retire(spare)
        self._spawned += 1
        env = self._env(None)
        logfile = self._logdir / f"standby-{self._spawned}.log"
        command = [sys.executable, "-m", "batchline.stage", standby.FLAG,
                   *(prepared.arguments() if prepared else [])]
        proc = self._spawn(command, env, logfile, stdin=subprocess.PIPE)
        self._standby = _Standby(proc, logfile, env, prepared)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _retire, self._standby)

    def _take_standby(self, task: StageTask, env: dict[str, str]
                      ) -> tuple[subprocess.Popen[bytes], Path] | None:
        """Hand `task` to the standby if it is alive and has the task's environment."""
        spare, self._standby = self._standby, None
        if spare is None:
            return None
        if not spare.fits(task, env) or spare.proc.poll() is not None or \
                spare.proc.stdin is None:
            _retire(spare)
            return None
        try:
            spare.proc.stdin.write(standby.encode(stage_arguments(task)))
            spare.proc.stdin.close()
        except OSError:  # it died between the check and the write
            _retire(spare)
            return None
        return spare.proc, spare.logfile

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
