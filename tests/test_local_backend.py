"""The local backend on real subprocesses."""

from __future__ import annotations

from pathlib import Path

from conftest import RUNAWAY_FEATURES, committed_encounters

from batchline import layout, storage
from batchline.backends.local import LocalBackend
from batchline.task import Cause, Resources, StageTask


def _features_task(root: str, encounters: str, timeout: int) -> StageTask:
    task = StageTask(run_id="l1", stage="features", inputs={"encounters": encounters},
                     params=dict(RUNAWAY_FEATURES),
                     outputs={"features": layout.output_uri(root, "l1", "features", "features")},
                     storage_root=root, task_uri=layout.task_uri(root, "l1", "features", 1),
                     cache_key="k", image="", resources=Resources("1", "1Gi", timeout))
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

