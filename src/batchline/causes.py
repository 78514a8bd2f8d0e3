"""Why a stage ended: the exit-code contract and the fixed set of causes.

One table for every backend: a platform reports an exit code (and, where it
can tell, whether the kernel killed the stage for memory), and
`Cause.from_exit` says what that means. Platform-only ends (eviction, image
pull, unschedulable, deadline) are decided by the backend's translator.
"""

from __future__ import annotations

import enum

EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_BAD_INPUT = 2
EXIT_OOM = 137  # 128 + SIGKILL: what the kernel's OOM killer leaves
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped (cancel, deadline)


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
    def from_exit(cls, code: int | None, oom_killed: bool | None = None) -> Cause:
        """The cause implied by a stage's exit code, on any backend.

        `oom_killed` is the platform's own word where it has one (Kubernetes'
        OOMKilled, the engine's State.OOMKilled); None means it cannot tell,
        and then exit 137 (SIGKILL) is read as the kernel's OOM kill.
        """
        if oom_killed:
            return cls.OUT_OF_MEMORY
        if code == EXIT_OK:
            return cls.SUCCEEDED
        if code == EXIT_BAD_INPUT:
            return cls.BAD_INPUT
        if code in (EXIT_OOM, -9) and oom_killed is None:
            return cls.OUT_OF_MEMORY
        return cls.USER_ERROR

    @property
    def retryable(self) -> bool:
        """Bad input never heals; preemption, transient errors and a lack of
        capacity (SageMaker's InsufficientCapacity, a cluster still scaling up) may."""
        return self in {Cause.EVICTED, Cause.USER_ERROR, Cause.UNSCHEDULABLE}

    def advice(self, stage: str, code: int | None = None) -> str:
        """One line a person can act on, naming the spec path to change."""
        return ADVICE[self].format(stage=stage, code=code)


ADVICE: dict[Cause, str] = {
    Cause.SUCCEEDED: "stage '{stage}' succeeded",
    Cause.BAD_INPUT: "stage '{stage}' rejected its input (exit 2); fix the data or the spec "
                     "field named above, then resume the run with the fix "
                     "(`batchline resume RUN --set FIELD=VALUE`)",
    Cause.OUT_OF_MEMORY: "stage '{stage}' ran out of memory (exit {code}); raise "
                         "stages.{stage}.resources.memory in the spec and resume the run",
    Cause.EVICTED: "stage '{stage}' was evicted or preempted; resume the run "
                   "(no retry was used up)",
    Cause.IMAGE_PULL: "stage '{stage}' could not get its image; check stages.{stage}.image, "
                      "that the image was built or pushed (`make images`), and the registry's "
                      "credentials on the backend",
    Cause.UNSCHEDULABLE: "stage '{stage}' could not be scheduled; lower "
                         "stages.{stage}.resources or check stages.{stage}.node_selector "
                         "and tolerations (on SageMaker: another "
                         "sagemaker.instance_types.{stage}, or retry later)",
    Cause.DEADLINE: "stage '{stage}' hit its deadline; raise "
                    "stages.{stage}.resources.timeout_seconds",
    Cause.USER_ERROR: "stage '{stage}' failed (exit {code}); its last log lines say why "
                      "(all of them: `batchline logs RUN {stage}`)",
    Cause.CANCELLED: "stage '{stage}' was cancelled",
}
