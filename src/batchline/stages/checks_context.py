"""What ingest's checks judge against besides the rows: the run's date and the previous run.

Both come from the run manifests under the storage root, which the stage can
read as any other object there (the task carries the root and the run id;
the manifest carries the pipeline's name):

- "now" for freshness is the day the run was created (manifest `created_at`,
  UTC), not the stage's clock: a retried, resumed or late-scheduled ingest of
  the same run judges against the same day and records the same results. A
  stage run without a run manifest (a task started by hand) uses its own clock
  and says so.
- the previous run is the most recent run of the same pipeline created before
  this one whose ingest `encounters` is committed (its own or one it reused
  from the cache).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from batchline import layout, storage
from batchline.errors import StorageError
from batchline.manifest import RunManifest, list_runs
from batchline.stages.checks import CheckContext
from batchline.task import StageTask

log = logging.getLogger(__name__)
OUTPUT = "encounters"


def _manifest(task: StageTask) -> RunManifest | None:
    try:
        return RunManifest.load(task.storage_root, task.run_id)
    except StorageError:
        return None


def check_context(task: StageTask, previous: bool) -> CheckContext:
    """The run's date and (when `previous`) the previous run's committed row count."""
    manifest = _manifest(task)
    if manifest is not None and manifest.created_at:
        as_of = manifest.created_day
        as_of_from = f"the day run {task.run_id} was created (UTC)"
    else:
        as_of = datetime.fromtimestamp(time.time(), UTC).date()
        as_of_from = "the stage's clock (UTC): no run manifest was found"
    context = CheckContext(as_of=as_of, as_of_from=as_of_from)
    if not previous:
        return context
    if manifest is None:
        return CheckContext(as_of, as_of_from, no_previous=f"no manifest of run "
                            f"{task.run_id} under {task.storage_root}, so its pipeline and "
                            "previous runs are unknown")
    return _with_previous(context, task, manifest)


def _with_previous(context: CheckContext, task: StageTask,
                   manifest: RunManifest) -> CheckContext:
    runs, _ = list_runs(task.storage_root)
    earlier = [m for m in runs if m.pipeline == manifest.pipeline and m.run_id != task.run_id
               and m.created_at <= manifest.created_at]
    for other in reversed(earlier):  # newest first
        entry = other.stages.get("ingest")
        uri = (entry.outputs.get(OUTPUT) if entry is not None else None) or \
            layout.output_uri(task.storage_root, other.run_id, "ingest", OUTPUT)
        try:
            record = storage.read_success(uri)
        except StorageError as exc:  # a run recorded under another root: not comparable
            log.info("ingest checks: skipping run %s (%s)", other.run_id, exc)
            continue
        if record is not None:
            return CheckContext(context.as_of, context.as_of_from, previous_run=other.run_id,
                                previous_rows=record.rows)
    return CheckContext(context.as_of, context.as_of_from, no_previous=(
        f"no earlier run of pipeline {manifest.pipeline!r} under {task.storage_root} has "
        "a committed ingest output"))
