"""What a backend is asked to run (StageTask) and what it reports (StageResult).

These two types are the whole contract between the launcher, the backends and
the stage entrypoint: a backend serialises a StageTask to JSON, starts
`python -m batchline.stage <stage> --task <uri>` somewhere, and translates
whatever its platform reports back into a StageResult with one Cause.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from batchline.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_OOM


@dataclass(frozen=True)
class Resources:
    """Compute asked for one stage; strings use Kubernetes quantities."""

    cpu: str = "1"
    memory: str = "2Gi"
    timeout_seconds: int = 3600


@dataclass(frozen=True)
class StageTask:
    """One attempt of one stage (or one shard of it), fully resolved.

    Inputs and outputs map dataset names to URIs under the storage root, so a
    stage never builds a path itself. `task_uri` is where the launcher stored
    this task as JSON; the stage entrypoint reads it back from there.
    """

    run_id: str
    stage: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    params: dict[str, Any]
    storage_root: str
    task_uri: str
    cache_key: str
    image: str = ""
    attempt: int = 1
    shard_index: int = 0
    shard_count: int = 1
    resources: Resources = field(default_factory=Resources)
    # Scheduling hints that only some backends use (Kubernetes nodeSelector,
    # tolerations, service account); opaque to the stage itself.
    placement: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A short name for logs and for platform object names."""
        shard = f"-{self.shard_index}" if self.shard_count > 1 else ""
        return f"{self.run_id}-{self.stage}{shard}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StageTask:
        data = json.loads(text)
        data["resources"] = Resources(**data.get("resources", {}))
        return cls(**data)

    def for_shard(self, index: int) -> StageTask:
        """The same task narrowed to one shard (used by fan-out)."""
        data = asdict(self)
        data["resources"] = self.resources
        data["shard_index"] = index
        return StageTask(**data)


class Cause(enum.StrEnum):
    """Why a stage ended: the fixed set every backend translates into."""

    SUCCEEDED = "succeeded"
    BAD_INPUT = "bad_input"
    OUT_OF_MEMORY = "out_of_memory"
    EVICTED = "evicted"
    IMAGE_PULL = "image_pull"
    UNSCHEDULABLE = "unschedulable"
    DEADLINE = "deadline"
    USER_ERROR = "user_error"
    CANCELLED = "cancelled"

    @classmethod
    def parse(cls, value: str) -> Cause:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(c.value for c in cls)
            raise ValueError(f"unknown cause {value!r}; known causes: {known}") from None

    @classmethod
    def from_exit_code(cls, code: int) -> Cause:
        """The cause implied by a stage process's exit code alone."""
        if code == EXIT_OK:
            return cls.SUCCEEDED
        if code == EXIT_BAD_INPUT:
            return cls.BAD_INPUT
        if code in (EXIT_OOM, -9):
            return cls.OUT_OF_MEMORY
        return cls.USER_ERROR

    @property
    def retryable(self) -> bool:
        """Bad input never heals; preemption and transient errors may."""
        return self in {Cause.EVICTED, Cause.USER_ERROR}


@dataclass(frozen=True)
class StageResult:
    """How one attempt of one stage ended, in backend-neutral terms."""

    stage: str
    cause: Cause
    exit_code: int | None = None
    message: str = ""
    log_tail: str = ""
    backend_ref: str = ""

    @property
    def ok(self) -> bool:
        return self.cause is Cause.SUCCEEDED

    def advice(self) -> str:
        """One line a person can act on."""
        return ADVICE[self.cause].format(stage=self.stage, code=self.exit_code)


ADVICE: dict[Cause, str] = {
    Cause.SUCCEEDED: "stage '{stage}' succeeded",
    Cause.BAD_INPUT: "stage '{stage}' rejected its input (exit 2); fix the data or spec named "
                     "above and resume the run",
    Cause.OUT_OF_MEMORY: "stage '{stage}' ran out of memory (exit {code}); raise "
                         "resources.{stage}.memory in the spec and resume the run",
    Cause.EVICTED: "stage '{stage}' was evicted or preempted; resume the run "
                   "(no retry was used up)",
    Cause.IMAGE_PULL: "stage '{stage}' could not pull its image; check the image name and "
                      "registry credentials (imagePullSecrets)",
    Cause.UNSCHEDULABLE: "stage '{stage}' could not be scheduled; lower resources.{stage} or "
                         "check nodeSelector and tolerations",
    Cause.DEADLINE: "stage '{stage}' hit its deadline; raise resources.{stage}.timeout_seconds",
    Cause.USER_ERROR: "stage '{stage}' failed (exit {code}); see the log lines above",
    Cause.CANCELLED: "stage '{stage}' was cancelled",
}
