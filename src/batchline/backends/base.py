"""The template every backend follows: submit, poll, fetch logs, stop.

A backend only knows its platform. It implements four small methods and
returns a typed `Outcome`; `Backend.wait` (here, once for all) waits with the
task's deadline, reports pending/running, saves the logs into storage once
(per shard, at the paths the launcher records), releases platform objects, and
turns the outcome into a `StageResult` through the one exit-code table
(`Cause.from_exit`). Adding a backend: see docs/extending.md.
"""

from __future__ import annotations

import abc
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from batchline import layout, storage
from batchline.causes import Cause
from batchline.errors import StorageMisconfigured, StorageUnavailable
from batchline.task import StageResult, StageTask

log = logging.getLogger(__name__)

Phase = Literal["pending", "running"]
# Called by a backend on every phase change it sees.
OnEvent = Callable[[StageTask, str], None]
# Called on every poll while a task runs (heartbeats, cancel requests); it may
# raise to stop waiting, and the caller then cancels the task.
OnTick = Callable[[StageTask], None]
LOG_TAIL_LINES = 20


class BackendOptions(BaseModel):
    """Base of each backend's typed options (spec `backends.<name>`, CLI `--option`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Handle:
    """A backend's reference to one submitted task; backends subclass it."""

    task: StageTask
    ref: str
    deadline: float = 0.0  # time.monotonic() past which the task is stopped
    cancelled: bool = False
    timed_out: bool = False
    waiting: bool = False  # a wait() is collecting this task right now
    result: StageResult | None = None  # set once wait() has collected the task


@dataclass(frozen=True)
class Outcome:
    """How a task ended, as its platform reports it.

    `exit_code` and `oom_killed` go through `Cause.from_exit`; `cause` is for
    ends the platform decides itself (evicted, image pull, unschedulable,
    deadline, cancelled) and wins over the exit code.
    """

    exit_code: int | None = None
    oom_killed: bool | None = None  # None: the platform cannot tell
    cause: Cause | None = None
    message: str = ""


H = TypeVar("H", bound=Handle)


class Backend(abc.ABC, Generic[H]):
    """Runs `python -m batchline.stage <stage> --task <uri>` on some platform."""

    name: ClassVar[str]
    # True when one submit runs every shard of a task (Kubernetes Indexed Job);
    # otherwise the launcher submits one task per shard.
    fans_out_shards: ClassVar[bool] = False
    # A platform that enforces the deadline itself gets this long to report it
    # before the template stops the task anyway.
    deadline_slack_seconds: ClassVar[float] = 0.0
    # True when submitting the same task again finds the one already running (a
    # name the platform keeps unique): a launcher that replaces one that went
    # away adopts the stage it left running instead of starting another.
    adopts_by_name: ClassVar[bool] = False
    poll_seconds: float = 0.2

    # -- what each backend implements -----------------------------------------
    @abc.abstractmethod
    def start(self, task: StageTask) -> H:
        """Start the task on the platform and return at once."""

    @abc.abstractmethod
    def poll(self, handle: H, timeout: float) -> Outcome | Phase:
        """The task's end, or its phase while it runs; may block up to `timeout` s."""

    @abc.abstractmethod
    def fetch_logs(self, handle: H) -> dict[int | None, str]:
        """The task's output by shard (None when not sharded) while the platform has it."""

    @abc.abstractmethod
    def stop(self, handle: H) -> None:
        """Ask the task to stop (SIGTERM, then SIGKILL after a grace); safe to repeat."""

    def release(self, handle: H, outcome: Outcome) -> None:
        """Remove what the platform keeps of an ended task (after its logs are saved)."""

    def let_go(self, handle: H) -> None:
        """Stop watching a task this launcher leaves running for the next one (its pod is
        going away); the task itself is untouched. Threads that watch it end here: one
        still alive when the interpreter exits can abort the process (CPython kills it
        with pthread_exit when it wakes)."""

    def expect_next(self, stage: str | None, cpu: str | None = None) -> None:
        """The stage the launcher may start after the next one it starts, with its CPU
        request (None: no other stage follows); a backend may prepare for it (the local
        one starts that stage's process ahead)."""

    def close(self) -> None:
        """The launcher is done with this backend: let go of anything prepared ahead."""

    def memory_limit(self, task: StageTask) -> str:
        """The memory limit the platform enforces, as an out-of-memory message names it."""
        return task.resources.memory

    def stored_logs(self, handle: H) -> str:
        """The logs saved by `wait`, for `logs()` after the platform forgot the task."""
        task = handle.task
        uri = layout.log_uri(task.storage_root, task.run_id, task.stage, task.attempt,
                             task.shard)
        return storage.read_text(uri) if storage.exists(uri) else ""

    # -- the template ------------------------------------------------------------
    def submit(self, task: StageTask) -> H:
        """Start the task; its deadline runs from now."""
        handle = self.start(task)
        handle.deadline = time.monotonic() + task.resources.timeout_seconds
        return handle

    def wait(self, handle: H, on_event: OnEvent | None = None,
             on_tick: OnTick | None = None) -> StageResult:
        """Block until the task ends; stop it at its deadline; keep its logs; translate."""
        if handle.result is not None:
            return handle.result
        handle.waiting = True
        try:
            outcome = self._await(handle, on_event, on_tick)
        finally:
            handle.waiting = False
        texts = self.fetch_logs(handle)
        kept = self._keep_logs(handle.task, texts)
        self.release(handle, outcome)
        text = "".join(texts.values())
        handle.result = translate(handle, outcome, text, tuple(kept),
                                  self.memory_limit(handle.task))
        log.info("stage %s: %s ended: %s", handle.task.stage, handle.ref,
                 handle.result.cause.value)
        return handle.result

    def logs(self, handle: H) -> str:
        """The task's combined output: live from the platform, else the stored copy."""
        return "".join(self.fetch_logs(handle).values()) or self.stored_logs(handle)

    def cancel(self, handle: H) -> None:
        """Stop the task; safe to repeat, and from another thread than a wait().

        A task nobody is waiting for is collected here (logs kept, platform
        objects removed); otherwise the running wait() collects it.
        """
        if handle.result is not None:
            return
        handle.cancelled = True
        self.stop(handle)
        if not handle.waiting:
            self.wait(handle)

    def _await(self, handle: H, on_event: OnEvent | None, on_tick: OnTick | None) -> Outcome:
        # Every task is pending until its platform says it runs; one that ended
        # with an exit code did run, even if no poll caught it running.
        phase = "pending"
        if on_event is not None:
            on_event(handle.task, phase)
        slack = self.deadline_slack_seconds
        while True:
            remaining = handle.deadline + slack - time.monotonic()
            if remaining <= 0 and not handle.timed_out and not handle.cancelled:
                # As Kubernetes' activeDeadlineSeconds: stop it, report DEADLINE.
                log.warning("stage %s: %s ran past its timeout of %d s; stopping it",
                            handle.task.stage, handle.ref, handle.task.resources.timeout_seconds)
                handle.timed_out = True
                self.stop(handle)
            state = self.poll(handle, max(0.0, min(self.poll_seconds, remaining))
                              if remaining > 0 else self.poll_seconds)
            if isinstance(state, Outcome):
                if phase != "running" and state.exit_code is not None and on_event is not None:
                    on_event(handle.task, "running")
                return state
            if state != phase and on_event is not None:
                on_event(handle.task, state)
            phase = state
            if on_tick is not None:
                on_tick(handle.task)

    def _keep_logs(self, task: StageTask, texts: dict[int | None, str]) -> list[str]:
        """Save each shard's log under the run once; returns the URIs written.

        When storage cannot take it, the log goes to a local file instead, and
        the error names that file: a stage's log is never lost with the platform.
        """
        kept = []
        for shard, text in (texts or {task.shard: ""}).items():
            uri = layout.log_uri(task.storage_root, task.run_id, task.stage, task.attempt,
                                 shard if task.shard_count > 1 else None)
            try:
                storage.write_text(uri, text)
            except (StorageUnavailable, StorageMisconfigured) as exc:
                local = keep_locally(task, shard, text)
                raise type(exc)(f"{exc}\nThe stage's log is kept at {local}") from exc
            kept.append(uri)
        return kept


def keep_locally(task: StageTask, shard: int | None, text: str) -> str:
    """Write a log that storage refused to a local file; returns its path."""
    folder = Path(tempfile.gettempdir(), "batchline-logs", task.run_id, task.stage)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"attempt-{task.attempt}{'' if shard is None else f'-shard-{shard}'}.log"
    path.write_text(text)
    return str(path)


def translate(handle: Handle, outcome: Outcome, text: str, logs: tuple[str, ...] = (),
              memory_limit: str | None = None) -> StageResult:
    """An outcome as a StageResult: the one table every backend shares."""
    task = handle.task
    if handle.cancelled:
        cause = Cause.CANCELLED
    elif handle.timed_out or outcome.cause is Cause.DEADLINE:
        cause = Cause.DEADLINE
    else:
        cause = outcome.cause or Cause.from_exit(outcome.exit_code, outcome.oom_killed)
    code = outcome.exit_code
    if cause is Cause.DEADLINE:
        message = (f"{handle.ref} ran past its timeout of {task.resources.timeout_seconds} s "
                   f"and was stopped" + (f" (exit {code})" if code is not None else ""))
        message = f"{message}; {outcome.message}" if outcome.message else message
    elif cause is Cause.OUT_OF_MEMORY:
        message = (f"{handle.ref} was killed at its memory limit of "
                   f"{memory_limit or task.resources.memory}"
                   + (f" (exit {code})" if code is not None else "")
                   + f"; {cause.advice(task.stage, code)}")
    elif cause in (Cause.BAD_INPUT, Cause.USER_ERROR):
        # The stage's own summary says more than "backoff limit reached".
        detail = last_error(text) or outcome.message
        message = f"exit {code}: {detail}" if cause is Cause.USER_ERROR and code is not None \
            else detail
    else:
        message = outcome.message
    return StageResult(task.stage, cause, code, message.strip(), log_tail(text), handle.ref,
                       logs)


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a stage's log, for error messages."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def last_error(text: str) -> str:
    """The error the stage entrypoint summarised as JSON on its last line, if any."""
    for line in reversed(text.rstrip().splitlines()[-5:]):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return str(data.get("error", ""))
    return ""
