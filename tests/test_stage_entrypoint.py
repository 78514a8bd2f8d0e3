"""`python -m batchline.stage`, the command every image and backend runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batchline import storage
from batchline.task import StageTask

COLUMNS = {"id": "int64", "name": "string"}


def _task(tmp_path: Path, **extra: object) -> StageTask:
    src = tmp_path / "in.csv"
    src.write_text("id,name\n1,a\n2,b\n3,c\n")
    root = tmp_path / "store"
    return StageTask(run_id="r", stage="ingest", inputs={},
                     outputs={"encounters": str(root / "enc"), "quarantine": str(root / "q")},
                     params={"source": str(src), "columns": COLUMNS}, storage_root=str(root),
                     task_uri=str(root / "task.json"), cache_key="k", **extra)  # type: ignore[arg-type]


def _stage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchline.stage", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=False)


def test_task_from_storage_uri(tmp_path: Path) -> None:
    task = _task(tmp_path)
    storage.write_text(task.task_uri, task.to_json())
    result = _stage("ingest", "--task", task.task_uri)
    assert result.returncode == 0, result.stderr
    assert storage.committed(task.outputs["encounters"]).rows == 3
    assert result.stderr.strip().splitlines()[-1].startswith('{"ok": true')


def test_task_inline_from_env_with_shard_index(tmp_path: Path) -> None:
    task = _task(tmp_path, shard_count=1)
    result = _stage("ingest", "--task", "env:BATCHLINE_TASK",
                    env={"BATCHLINE_TASK": task.to_json(), "BATCHLINE_SHARD_FROM_ENV":
                         "JOB_COMPLETION_INDEX", "JOB_COMPLETION_INDEX": "0"})
    assert result.returncode == 0, result.stderr
    assert "shard 0/1" in result.stderr


def test_bad_task_references_exit_2(tmp_path: Path) -> None:
    task = _task(tmp_path)
    storage.write_text(task.task_uri, task.to_json())
    assert _stage("score", "--task", task.task_uri).returncode == 2  # wrong stage
    missing = _stage("ingest", "--task", "env:NOPE")
    assert missing.returncode == 2 and "NOPE is not set" in missing.stderr
    absent = _stage("ingest", "--task", str(tmp_path / "absent.json"))
    assert absent.returncode == 2 and "does not exist" in absent.stderr
    assert _stage("deploy", "--task", "x").returncode == 2  # argparse: unknown stage


def test_sigterm_ends_the_stage_promptly(tmp_path: Path) -> None:
    import signal
    import time

    task = StageTask(run_id="r", stage="features", inputs={"encounters": str(tmp_path / "none")},
                     outputs={"features": str(tmp_path / "out")}, params={"sql": "SELECT 1"},
                     storage_root=str(tmp_path), task_uri="env:BATCHLINE_TASK", cache_key="k")
    proc = subprocess.Popen([sys.executable, "-m", "batchline.stage", "features", "--task",
                             "env:BATCHLINE_TASK", "--wait-inputs", "600"],
                            env={**os.environ, "BATCHLINE_TASK": task.to_json()},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while "starting" not in proc.stderr.readline():  # waiting for its input now
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert storage.read_success(task.outputs["features"]) is None


def test_a_stage_process_ends_without_teardown_but_runs_its_exit_handlers(
        tmp_path: Path) -> None:
    # What the stage module's __main__ ends with: atexit handlers run (tempfile's and
    # logging's cleanup), buffered output is flushed, and the code is kept.
    marker = tmp_path / "handler-ran"
    code = ("import atexit, sys\n"
            "from batchline.process_exit import exit_without_teardown\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
            "sys.stdout.write('buffered, not flushed')\n"
            "exit_without_teardown(3)\n"
            "print('never reached')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3
    assert done.stdout == "buffered, not flushed"
    assert marker.read_text() == "yes"


def test_a_stage_process_waits_for_a_live_non_daemon_thread(tmp_path: Path) -> None:
    # The thread finishes only when this test closes the child's stdin, after the child
    # has said it is exiting: an os._exit there would lose the thread's write.
    marker = tmp_path / "thread-done"
    code = ("import sys, threading\n"
            "from batchline.process_exit import exit_without_teardown\n"
            "def late():\n"
            "    sys.stdin.read()\n"
            f"    open({str(marker)!r}, 'w').write('done')\n"
            "threading.Thread(target=late).start()\n"
            "print('exiting', flush=True)\n"
            "exit_without_teardown(4)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "exiting\n"
    assert not marker.exists()
    child.stdin.close()
    assert child.wait(timeout=60) == 4
    assert marker.read_text() == "done"
