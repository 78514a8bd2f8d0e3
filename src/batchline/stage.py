"""The one entrypoint every image and every backend runs.

    python -m batchline.stage <ingest|features|train|score> --task <uri>
    python -m batchline.stage --standby [--prepare STAGE [--cpu CPU]]
                               (imports, then reads those arguments from stdin)
    train                      (in a SageMaker Training Job: the task from /opt/ml)

Exit codes: 0 success, 2 bad input or config (never retried), 1 any other
error (retryable), 137 out of memory. The last line on stderr is a JSON
summary the backends may parse; everything before it is the stage's log.
"""

from __future__ import annotations

if __name__ == "__main__":
    # A stage process: pyarrow and LightGBM load faster without pandas and
    # scikit-learn, which no stage uses. Done before anything imports pyarrow.
    from batchline.lean_imports import skip_optional_imports

    skip_optional_imports()

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from batchline import cpu, sagemaker_contract, standby, storage
from batchline.causes import EXIT_BAD_INPUT, EXIT_OOM, EXIT_RETRYABLE
from batchline.errors import BatchlineError, SpecError, StorageError
from batchline.holds import hold_from_env
from batchline.process_exit import exit_without_teardown
from batchline.retry import PERMANENT_ERRNOS, describe, is_transient
from batchline.sagemaker_contract import OPT_ML, SageMakerJob
from batchline.stages import STAGES
from batchline.storage import read_text
from batchline.storage_errors import misconfiguration
from batchline.task import StageTask

log = logging.getLogger("batchline.stage")

# Loaded by every standby (see batchline.standby) because they read nothing of
# the task when imported. LightGBM is not among them: its OpenMP runtime reads
# OMP_WAIT_POLICY and OMP_NUM_THREADS once, when it loads, and the task's CPU
# budget sets them; a standby prepared for a stage loads it after fixing those.
WARM_MODULES = ("pyarrow.parquet", "pyarrow.dataset", "pyarrow.compute", "duckdb")
# What this process, as a standby, prepared for (None: nothing stage-specific).
_prepared: standby.Prepared | None = None


def warm_up(target: standby.Prepared | None) -> None:
    """Import ahead; with a `target`, fix its CPU policy and import its stage module."""
    global _prepared
    for name in WARM_MODULES:
        # An image without the module is one whose stage does not need it.
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if target is None:
        return
    try:
        cpu.apply(target.cpu)
        STAGES[target.stage].load()
    except Exception as exc:  # the stage meets the same problem and reports it itself
        log.warning("standby: could not prepare for stage %s: %s", target.stage, exc)
        return
    _prepared = target


def run_task(task: StageTask) -> dict[str, object]:
    """Run one stage task in this process; returns the stage's summary."""
    summary: dict[str, object] = STAGES[task.stage].load().run(task)
    return summary


def load_task(ref: str) -> StageTask:
    """Read the task from a storage URI, or from an environment variable.

    `env:NAME` lets a Job rendered for kubectl carry its task inline. When
    BATCHLINE_SHARD_FROM_ENV names a variable (JOB_COMPLETION_INDEX in an
    Indexed Job), the shard index comes from it.
    """
    if ref.startswith("env:"):
        name = ref[len("env:"):]
        if name not in os.environ:
            raise SpecError(f"--task {ref}: environment variable {name} is not set")
        task = StageTask.from_json(os.environ[name])
    else:
        task = StageTask.from_json(read_text(ref))
    index_var = os.environ.get("BATCHLINE_SHARD_FROM_ENV")
    if index_var and index_var in os.environ:
        try:
            task = task.for_shard(int(os.environ[index_var]))
        except ValueError as exc:
            raise SpecError(f"{index_var}={os.environ[index_var]!r}: {exc}") from None
    return task


def wait_for_inputs(task: StageTask, seconds: int, poll: float = 5.0) -> None:
    """Block until every input dataset is committed, or fail after `seconds`.

    Lets all of a run's Jobs be applied at once with kubectl: each stage
    starts its work when the stages it reads from have committed.
    """
    deadline = time.monotonic() + seconds
    for uri in task.inputs.values():
        while storage.read_success(uri) is None:
            if time.monotonic() > deadline:
                raise StorageError(f"input {uri} was not committed within {seconds}s; check the "
                                   "upstream stage's Job")
            time.sleep(poll)


def set_cpu_policy(task: StageTask) -> None:
    """Size thread pools from the CPU this stage really has; OpenMP waits passively.

    Must run before the stage module is imported: libgomp (LightGBM's OpenMP)
    reads OMP_WAIT_POLICY once, when it is loaded.
    """
    budget, policy = cpu.apply(task.resources.cpu)
    # A standby prepared for this very stage and CPU request loaded it under this policy.
    ahead = _prepared is not None and _prepared.fits(task.stage, task.resources.cpu)
    if "lightgbm" in sys.modules and not ahead:
        log.warning("stage %s: LightGBM was imported before the CPU policy was set; "
                    "OpenMP may spin (OMP_WAIT_POLICY not applied)", task.stage)
    fields = STAGES[task.stage].params.model_fields
    name = next((n for n in ("num_threads", "threads") if n in fields), None)
    if name is None:
        chosen = f"{budget.cores} Arrow threads"
    else:
        asked = int(task.params.get(name, fields[name].default))
        chosen = f"{budget.threads(asked)} threads ({name} {asked})"
    log.info("stage %s: %s; CPU available %d (%s); OpenMP wait policy %s", task.stage, chosen,
             budget.cores, budget.describe(), policy)


# The signal that asked this process to stop, once one did.
_stopped_by: list[int] = []


def _terminated(signum: int, frame: object) -> None:
    _stopped_by.append(signum)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, opt_ml: Path = OPT_ML) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if standby.is_standby(argv):
        warm_up(standby.target_of(argv))
        argv = standby.await_arguments(sys.stdin)
        if argv is None:
            return 0  # nothing came: the run ended, or its launcher is gone
    parser = argparse.ArgumentParser(prog="python -m batchline.stage")
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--task", help="URI of the task JSON written by the launcher, or "
                        "env:NAME; in a SageMaker Training Job, from hyperparameters.json")
    parser.add_argument("--wait-inputs", type=int, default=0, metavar="SECONDS",
                        help="wait up to SECONDS for the inputs to be committed")
    args = parser.parse_args(argv)
    # As PID 1 in a pod, Python ignores SIGTERM unless it has a handler; exit
    # through SystemExit so open dataset writers abandon their attempt.
    signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = sagemaker_contract.detect(opt_ml)
    code, message = run(args, job)
    if code != 0 and job is not None:
        job.write_failure(code, message)
    return code


def run(args: argparse.Namespace, job: SageMakerJob | None) -> tuple[int, str]:
    """Run the stage named on the command line: its exit code and, on failure, why."""
    started = time.monotonic()
    try:
        task = find_task(args, job)
        log.info("stage %s: starting (run %s, attempt %d, shard %d/%d)", task.stage, task.run_id,
                 task.attempt, task.shard_index, task.shard_count)
        hold_from_env()("stage-started")
        if job is not None and sagemaker_contract.shard_already_committed(task):
            log.info("stage %s: shard %d was committed by an earlier attempt; nothing to do",
                     task.stage, task.shard_index)
            return 0, ""
        set_cpu_policy(task)
        if args.wait_inputs:
            wait_for_inputs(task, args.wait_inputs)
        summary = run_task(task)
        if job is not None:
            job.keep_model(task)
    except BatchlineError as exc:
        # A stage speaks the stage contract (2 never retried, 1 retried), not the CLI's.
        return _failed(args.stage, EXIT_BAD_INPUT if exc.exit_code == EXIT_BAD_INPUT
                       else EXIT_RETRYABLE, str(exc))
    except ValidationError as exc:
        # The stage's params, checked again where they are used (a task written
        # by hand, or by another batchline version): a spec error, never retried.
        return _failed(args.stage, EXIT_BAD_INPUT, f"stages.{args.stage}.params: {exc}")
    except MemoryError:
        log.error("stage %s: out of memory", args.stage)
        return EXIT_OOM, "out of memory"
    except OSError as exc:
        wrong = misconfiguration(exc, "read or write", exc.filename or "its data")
        if wrong is not None:  # no bucket, refused credentials: no retry can heal it
            return _failed(args.stage, EXIT_BAD_INPUT, str(wrong))
        if exc.errno not in PERMANENT_ERRNOS and not is_transient(exc):
            log.exception("stage %s: unexpected error", args.stage)
            return EXIT_RETRYABLE, f"{type(exc).__name__}: {exc}"
        # A full or read-only disk, or an object store that kept failing past
        # its client's retries: one clear line (exit 1, the launcher retries).
        return _failed(args.stage, EXIT_RETRYABLE,
                       describe(exc, "read or write", exc.filename or "its data"))
    except Exception as exc:
        if _stopped_by:
            # SIGTERM inside C code (DuckDB's "Query interrupted") surfaces as that
            # code's own error: the stage was stopped, it did not fail.
            code = 128 + _stopped_by[0]
            log.warning("stage %s: stopped by signal %d (%s)", args.stage, _stopped_by[0], exc)
            return code, f"stopped (exit {code})"
        log.exception("stage %s: unexpected error", args.stage)
        return EXIT_RETRYABLE, f"{type(exc).__name__}: {exc}"
    except SystemExit as exc:  # argparse inside stage code, or explicit exits (SIGTERM)
        code = int(exc.code or 0)
        return code, "" if code == 0 else f"stopped (exit {code})"
    summary["seconds"] = round(time.monotonic() - started, 3)
    log.info("stage %s: committed %s", args.stage, json.dumps(summary, sort_keys=True))
    print(json.dumps({"ok": True, **summary}, sort_keys=True), file=sys.stderr)
    return 0, ""


def find_task(args: argparse.Namespace, job: SageMakerJob | None) -> StageTask:
    """The task from --task, or from a Training Job's hyperparameters; narrowed to this
    host's shard when SageMaker runs the job on several hosts."""
    if args.task is None and (job is None or job.kind != "training"):
        raise SpecError("--task is required (outside a SageMaker Training Job)")
    ref = args.task if args.task is not None else job.task_ref()  # type: ignore[union-attr]
    task = load_task(ref)
    if task.stage != args.stage:
        raise SpecError(f"task {ref} is for stage {task.stage!r}, not {args.stage!r}")
    if job is not None and task.shard_count > 1:
        try:
            task = task.for_shard(job.host_index())
        except ValueError as exc:
            raise SpecError(f"SageMaker host: {exc}") from None
    return task


def _failed(stage: str, code: int, message: str) -> tuple[int, str]:
    log.error("stage %s: %s", stage, message)
    print(json.dumps({"ok": False, "error": message}), file=sys.stderr)
    return code, message


if __name__ == "__main__":
    exit_without_teardown(main())
