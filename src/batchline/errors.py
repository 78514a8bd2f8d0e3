"""One error tree for the whole project, wrapped at each boundary.

Every message says what went wrong *and* what to do about it; the CLI prints
the message alone (no traceback) and exits with the error's exit code.
"""

from __future__ import annotations

from batchline.causes import EXIT_BAD_INPUT, EXIT_RETRYABLE, Cause

# The CLI's exit code for a run that failed for a cause other than bad input:
# an object store that kept failing included (a stage itself exits 1 for it).
EXIT_FAILED = 3


class BatchlineError(Exception):
    """Base of every error batchline raises on purpose."""

    exit_code = EXIT_RETRYABLE
    # The run's manifest as it ended, when the error ended a run (set by the client).
    manifest: object | None = None


class SpecError(BatchlineError):
    """The pipeline spec or a command-line option is wrong; nothing ran."""

    exit_code = EXIT_BAD_INPUT


class DataError(BatchlineError):
    """Input data is malformed; retrying will not help."""

    exit_code = EXIT_BAD_INPUT


class StorageError(BatchlineError):
    """A storage URI is invalid or a dataset is missing or uncommitted."""

    exit_code = EXIT_BAD_INPUT


class StorageUnavailable(BatchlineError):
    """Storage failed for longer than the retry policy waits, or cannot be written at all
    (a full or read-only disk); resuming once it is fixed heals the run."""

    exit_code = EXIT_FAILED


class StorageMisconfigured(BatchlineError):
    """The object store cannot be used as configured: no such bucket, no or refused
    credentials, access denied, an unknown endpoint host, another region. Retrying
    cannot help; the message says which setting to change."""

    exit_code = EXIT_BAD_INPUT


class RunCancelled(BatchlineError):
    """A run was cancelled (`batchline cancel`, Ctrl-C, SIGTERM); resume continues it."""

    exit_code = 130  # 128 + SIGINT, as a shell reports an interrupted command


class LauncherDetached(BaseException):
    """The launcher itself is going away (its pod evicted, preempted or drained: SIGTERM
    with BATCHLINE_ON_SIGTERM=detach, as launcher Jobs run). It lets go of the run and
    leaves the running stage to the launcher that replaces it, which adopts it. Not an
    error of the run, so a BaseException (like KeyboardInterrupt): nothing that handles
    errors marks the run failed or cancels its stages on the way out."""

    exit_code = 143  # 128 + SIGTERM


class WaitTimedOut(BatchlineError):
    """`wait --timeout` ran out before the run ended; the run goes on."""

    exit_code = 124  # as coreutils' timeout(1)


class BackendError(BatchlineError):
    """A backend could not submit, watch or cancel a stage."""


class StageFailed(BatchlineError):
    """A stage ended without committing its outputs."""

    def __init__(self, stage: str, cause: Cause, message: str, exit_code: int | None = None,
                 log_tail: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.cause = cause
        self.stage_exit_code = exit_code
        self.log_tail = log_tail
        self.exit_code = EXIT_BAD_INPUT if cause is Cause.BAD_INPUT else EXIT_RETRYABLE
