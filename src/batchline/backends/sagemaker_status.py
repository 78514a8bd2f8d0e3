"""Pure translators: a Describe*Job response as a phase, or as an Outcome with a cause.

The table (issue 9's taxonomy): capacity errors -> unschedulable; "use an
instance type with more memory" or exit 137 -> out of memory;
MaxRuntimeExceeded -> deadline; a spot interruption -> evicted; exit 2 ->
bad input; image problems -> image pull; Stopped -> cancelled; anything else
-> user error with the FailureReason. The stage entrypoint writes
`exit code <n>: <reason>` to the failure/message file, so the exit code comes
back through FailureReason (training) or ExitMessage (processing).

A status this module does not know is an open world: `phase_or_outcome`
reports it as the last known phase with its raw text, and the backend logs it
and keeps waiting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from batchline.backends.base import Outcome, Phase
from batchline.causes import EXIT_OOM, Cause

_EXIT = re.compile(r"exit code:?\s*(-?\d+)", re.IGNORECASE)
_CAPACITY = re.compile(r"CapacityError|InsufficientInstanceCapacity|InsufficientCapacity|"
                       r"ResourceLimitExceeded|capacity", re.IGNORECASE)
_MEMORY = re.compile(r"OutOfMemory|instance type with more memory", re.IGNORECASE)
_IMAGE = re.compile(r"CannotStartContainerError|image|ECR|pull|manifest", re.IGNORECASE)
_SPOT = re.compile(r"spot.*interrupt|interrupt.*spot", re.IGNORECASE)
_DEADLINE = re.compile(r"MaxRuntimeExceeded|MaxRuntimeInSeconds|MaxWaitTimeExceeded",
                       re.IGNORECASE)


@dataclass(frozen=True)
class Unknown:
    """A status this version does not know, with the platform's raw words."""

    status: str
    detail: str


def phase_or_outcome(kind: str, desc: dict[str, Any]) -> Phase | Outcome | Unknown:
    """What one Describe{Training,Processing}Job response (API shape) says."""
    status = str(desc.get("TrainingJobStatus" if kind == "training"
                          else "ProcessingJobStatus", ""))
    secondary = str(desc.get("SecondaryStatus", ""))
    if status in ("InProgress", "Stopping"):
        return _phase(kind, desc, secondary)
    if status == "Completed":
        return Outcome(exit_code=0, oom_killed=False)
    if status == "Failed":
        return failed(desc, secondary)
    if status == "Stopped":
        return stopped(desc, secondary)
    return Unknown(status or "<none>", f"secondary status {secondary!r}" if secondary else "")


def _phase(kind: str, desc: dict[str, Any], secondary: str) -> Phase:
    if kind == "training":
        return "running" if secondary in ("Training", "Uploading", "Stopping") else "pending"
    # Processing reports no secondary status; its start time says the container runs.
    return "running" if desc.get("ProcessingStartTime") else "pending"


def reason_of(desc: dict[str, Any]) -> str:
    """The platform's explanation: FailureReason, and a processing job's ExitMessage."""
    parts = [str(desc.get(k) or "").strip() for k in ("FailureReason", "ExitMessage")]
    return "; ".join(p for p in parts if p)


def exit_code_of(text: str) -> int | None:
    found = _EXIT.findall(text)
    return int(found[-1]) if found else None


def failed(desc: dict[str, Any], secondary: str = "") -> Outcome:
    """A Failed job: the cause from its reason, the exit code the stage wrote."""
    reason = reason_of(desc)
    code = exit_code_of(reason)
    if secondary == "Interrupted" or _SPOT.search(reason):
        return Outcome(code, cause=Cause.EVICTED, message=f"spot capacity was reclaimed: "
                       f"{reason}")
    if _MEMORY.search(reason) or code == EXIT_OOM:
        return Outcome(code if code is not None else EXIT_OOM, oom_killed=True, message=reason)
    if code is not None:  # the stage's own end: exit 2 bad input, 1 retryable
        return Outcome(code, oom_killed=False, message=_after_code(reason))
    if _DEADLINE.search(reason):
        return Outcome(None, cause=Cause.DEADLINE, message=reason)
    if _CAPACITY.search(reason):
        return Outcome(None, cause=Cause.UNSCHEDULABLE, message=reason)
    if _IMAGE.search(reason):
        return Outcome(None, cause=Cause.IMAGE_PULL, message=reason)
    return Outcome(None, cause=Cause.USER_ERROR, message=reason or "the job failed with no "
                   "FailureReason")


def stopped(desc: dict[str, Any], secondary: str = "") -> Outcome:
    """A Stopped job: past its max runtime (deadline), else stopped by someone."""
    reason = reason_of(desc)
    if secondary in ("MaxRuntimeExceeded", "MaxWaitTimeExceeded") or _DEADLINE.search(reason):
        return Outcome(exit_code_of(reason), cause=Cause.DEADLINE,
                       message=reason or f"SageMaker stopped the job ({secondary})")
    if secondary == "Interrupted" or _SPOT.search(reason):
        return Outcome(None, cause=Cause.EVICTED, message=reason or "spot capacity reclaimed")
    return Outcome(None, cause=Cause.CANCELLED, message=reason or "the job was stopped")


def _after_code(reason: str) -> str:
    """The stage's own words: what follows `exit code N:` (SageMaker prefixes its own)."""
    match = list(_EXIT.finditer(reason))
    tail = reason[match[-1].end():].lstrip(": ").strip() if match else ""
    return tail or reason
