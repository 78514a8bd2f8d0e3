"""The one protocol every backend implements: submit, wait, logs, cancel."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchline.task import StageResult, StageTask

# Called by a backend on every state change it sees ("pending", "running", ...).
OnEvent = Callable[[StageTask, str], None]


@dataclass
class Handle:
    """A backend's reference to one submitted task."""

    task: StageTask
    ref: str
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Runs `python -m batchline.stage <stage> --task <uri>` on some platform.

    `submit` must return quickly; `wait` blocks until the task ends and
    translates the platform's end state into a StageResult (never raises for
    a failed stage, only for a backend that cannot be reached). `logs` returns
    the stage's combined output; `cancel` stops it and is safe to call twice.
    """

    name: str

    def submit(self, task: StageTask) -> Handle: ...

    def wait(self, handle: Handle, on_event: OnEvent | None = None) -> StageResult: ...

    def logs(self, handle: Handle) -> str: ...

    def cancel(self, handle: Handle) -> None: ...


LOG_TAIL_LINES = 20


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
