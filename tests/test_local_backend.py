"""The local backend on real subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUNAWAY_FEATURES, committed_encounters, eventually

from batchline import layout, standby, storage
from batchline.backends.local import LocalBackend, LocalHandle, _Standby
from batchline.task import Cause, Resources, StageTask


def _features_task(root: str, encounters: str, timeout: int, attempt: int = 1,
                   cpu: str = "1") -> StageTask:
    task = StageTask(run_id="l1", stage="features", attempt=attempt,
                     inputs={"encounters": encounters},
                     params=dict(RUNAWAY_FEATURES),
                     outputs={"features": layout.output_uri(root, "l1", "features", "features")},
                     storage_root=root, task_uri=layout.task_uri(root, "l1", "features", attempt),
                     cache_key="k", image="", resources=Resources(cpu, "1Gi", timeout))
    storage.write_text(task.task_uri, task.to_json())
    return task


def test_runaway_stage_is_stopped_at_its_deadline(tmp_path: Path, demo_csv: Path) -> None:
    root = str(tmp_path / "store")
    task = _features_task(root, committed_encounters(root, demo_csv), timeout=3)
    backend = LocalBackend(grace_seconds=1)
    handle = backend.submit(task)
    result = backend.wait(handle)
    assert result.cause is Cause.DEADLINE, result
    assert "timeout of 3 s" in result.message
    assert handle.proc.poll() is not None  # the process is gone, not orphaned
    assert storage.read_success(task.outputs["features"]) is None
    saved = layout.log_uri(root, "l1", "features", 1, None)
    assert storage.exists(saved)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_next_stage_runs_in_the_process_started_ahead(tmp_path: Path,
                                                          demo_csv: Path) -> None:
    root = str(tmp_path / "store")
    encounters = committed_encounters(root, demo_csv)
    backend = LocalBackend(grace_seconds=1)
    first = backend.submit(_features_task(root, encounters, timeout=3))
    assert backend._standby is not None
    spare = backend._standby.proc.pid
    # Started cold, this one may take over 3 s to import on a loaded machine; a SIGTERM
    # before its handler is set kills it outright (-15). The deadline is enforced by
    # wait(), so waiting for the stage to start first keeps the deadline and its cause.
    assert first.logfile is not None
    eventually(lambda: "stage features: starting" in first.logfile.read_text(errors="replace"),
               timeout=60, what="the cold-started stage reached its own code")
    assert backend.wait(first).cause is Cause.DEADLINE

    second_task = _features_task(root, encounters, timeout=3, attempt=2)
    second = backend.submit(second_task)
    assert second.proc is not None and second.proc.pid == spare
    # A stage run by a standby is stopped at its deadline as any other, and logs alike.
    result = backend.wait(second)
    assert result.cause is Cause.DEADLINE, result
    # Stopped by its own SIGTERM handler inside DuckDB's query, not SIGKILLed.
    assert first.proc.returncode == second.proc.returncode == 143
    assert "stage features: starting (run l1, attempt 2" in backend.stored_logs(second)
    assert storage.read_success(second_task.outputs["features"]) is None

    # The spare started for a stage that never comes exits once the backend closes.
    assert backend._standby is not None
    last = backend._standby.proc
    backend.close()
    assert last.wait(timeout=30) == 0


def test_no_process_is_started_ahead_of_the_last_stage_or_when_warm_is_off(
        tmp_path: Path, demo_csv: Path) -> None:
    root = str(tmp_path / "store")
    encounters = committed_encounters(root, demo_csv)
    last = LocalBackend(grace_seconds=1)
    last.expect_next(None)
    last.stop(last.submit(_features_task(root, encounters, timeout=60)))
    assert last._standby is None

    cold = LocalBackend(grace_seconds=1, warm=False)
    cold.stop(cold.submit(_features_task(root, encounters, timeout=60)))
    assert cold._standby is None


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _prepared_for(stage: str, cpu: str, tmp_path: Path, demo_csv: Path
                  ) -> tuple[LocalBackend, str, str, LocalHandle, _Standby]:
    """A backend told that `stage` (with `cpu`) comes next, running a features task."""
    root = str(tmp_path / "store")
    encounters = committed_encounters(root, demo_csv)
    backend = LocalBackend(grace_seconds=1)
    backend.expect_next(stage, cpu)
    first = backend.submit(_features_task(root, encounters, timeout=60))
    spare = backend._standby
    assert spare is not None and spare.prepared == standby.Prepared(stage, cpu)
    return backend, root, encounters, first, spare


def test_a_standby_prepared_for_the_next_stage_has_its_libraries_loaded(
        tmp_path: Path, demo_csv: Path) -> None:
    backend, root, encounters, first, spare = _prepared_for("train", "1", tmp_path, demo_csv)
    # Before any task came, it fixed train's CPU policy and loaded LightGBM under it.
    eventually(lambda: "lib_lightgbm" in _maps(spare.proc.pid), timeout=60,
               what="the standby prepared for train to load LightGBM")
    backend.stop(first)
    # It runs train with cpu 1 only: any other stage is started cold, and it is let go.
    backend.expect_next(None)
    second = backend.submit(_features_task(root, encounters, timeout=60, attempt=2))
    assert second.proc is not None and second.proc.pid != spare.proc.pid
    assert spare.proc.wait(timeout=30) == 0
    assert backend._standby is None  # nothing follows: none is started ahead
    backend.stop(second)
    backend.close()


def test_a_standby_prepared_for_a_stage_runs_it_only_with_the_same_cpu(
        tmp_path: Path, demo_csv: Path) -> None:
    backend, root, encounters, first, spare = _prepared_for("features", "1", tmp_path,
                                                             demo_csv)
    backend.stop(first)
    other_cpu = backend.submit(_features_task(root, encounters, timeout=60, attempt=2,
                                              cpu="2"))
    assert other_cpu.proc is not None and other_cpu.proc.pid != spare.proc.pid
    backend.stop(other_cpu)
    assert spare.proc.wait(timeout=30) == 0

    # The next one, prepared for features with cpu 1 again, gets the matching task, and
    # runs it to the end: same result, same log as a cold start.
    task = _features_task(root, encounters, timeout=120, attempt=3)
    task.params.update(sql="SELECT * FROM encounters", order_by=["encounter_id"])
    storage.write_text(task.task_uri, task.to_json())
    again = backend._standby
    assert again is not None and again.prepared == standby.Prepared("features", "1")
    matched = backend.submit(task)
    assert matched.proc is not None and matched.proc.pid == again.proc.pid
    assert backend.wait(matched).cause is Cause.SUCCEEDED
    logs = backend.stored_logs(matched)
    assert "stage features: starting (run l1, attempt 3" in logs
    assert "spec cpu 1" in logs and "imported before" not in logs
    assert storage.read_success(task.outputs["features"]) is not None
    backend.close()


def test_a_standby_with_another_environment_is_not_used(tmp_path: Path, demo_csv: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "store")
    encounters = committed_encounters(root, demo_csv)
    backend = LocalBackend(grace_seconds=1)
    backend.stop(backend.submit(_features_task(root, encounters, timeout=60)))
    assert backend._standby is not None
    stale = backend._standby.proc
    # The stage must see the environment as it is when it starts, not when its standby did.
    monkeypatch.setenv("BATCHLINE_CPU_WORKERS", "2")
    handle = backend.submit(_features_task(root, encounters, timeout=60, attempt=2))
    assert handle.proc is not None and handle.proc.pid != stale.pid
    assert stale.wait(timeout=30) == 0  # let go without running anything
    backend.stop(handle)
    backend.close()


def test_a_launcher_that_dies_leaves_no_standby_behind(tmp_path: Path) -> None:
    # SIGKILL gives the launcher no chance to close(): the standby sees its stdin
    # close with the launcher's death and exits by itself.
    script = ("import os, sys\n"
              "from batchline.backends.local import LocalBackend\n"
              "b = LocalBackend()\n"
              "b._keep_standby()\n"
              "print(b._standby.proc.pid, flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -9
    spare = int(done.stdout.split()[0])
    eventually(lambda: not _alive(spare), timeout=30, what=f"standby {spare} to exit")
