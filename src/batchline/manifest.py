"""The run manifest: every state change of a run, stage by stage, next to the data.

It is rewritten atomically (see storage.write_bytes) at each change, so
`batchline status` and `batchline resume` always read a consistent picture,
even of a run whose launcher was killed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from batchline import layout, storage
from batchline.errors import StorageError

# Stage states, in the order a stage moves through them.
PENDING, RUNNING, SUCCEEDED, REUSED, FAILED, SKIPPED, CANCELLED = (
    "pending", "running", "succeeded", "reused", "failed", "skipped", "cancelled")
DONE = {SUCCEEDED, REUSED}


class RunManifest:
    """A thin, always-JSON-serialisable view of one run's manifest."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    def new(cls, run_id: str, pipeline: str, root: str, backend: str, spec: dict[str, Any],
            stages: list[str]) -> RunManifest:
        now = time.time()
        return cls({
            "run_id": run_id, "pipeline": pipeline, "storage_root": root, "backend": backend,
            "spec": spec, "selected_stages": stages, "state": PENDING,
            "created_at": now, "updated_at": now, "ended_at": None,
            "stages": {s: {"state": PENDING, "attempts": []} for s in stages},
            "events": [],
        })

    @classmethod
    def load(cls, root: str, run_id: str) -> RunManifest:
        uri = layout.manifest_uri(root, run_id)
        try:
            return cls(json.loads(storage.read_text(uri)))
        except StorageError:
            raise StorageError(f"no run {run_id!r} under {root} (no {uri}); "
                               "`batchline runs` lists the runs") from None

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def root(self) -> str:
        return str(self.data["storage_root"])

    def stage(self, name: str) -> dict[str, Any]:
        stages: dict[str, dict[str, Any]] = self.data["stages"]
        return stages.setdefault(name, {"state": PENDING, "attempts": []})

    def event(self, stage: str, state: str, **fields: Any) -> None:
        """Record a state change of a stage and persist the manifest."""
        now = time.time()
        entry = self.stage(stage)
        entry["state"] = state
        entry.update(fields)
        if state == RUNNING and "started_at" not in entry:
            entry["started_at"] = now
        if state in (SUCCEEDED, REUSED, FAILED, SKIPPED, CANCELLED):
            entry["ended_at"] = now
        self.data["events"].append({"t": now, "stage": stage, "state": state,
                                    **{k: v for k, v in fields.items() if k in ("reason",
                                                                               "attempt")}})
        self.save()

    def set_state(self, state: str) -> None:
        self.data["state"] = state
        if state in (SUCCEEDED, FAILED, CANCELLED):
            self.data["ended_at"] = time.time()
        self.save()

    def save(self) -> None:
        self.data["updated_at"] = time.time()
        storage.write_text(layout.manifest_uri(self.root, self.run_id),
                           json.dumps(self.data, indent=2, sort_keys=True, default=str))


def list_runs(root: str) -> list[RunManifest]:
    """Every run under a storage root, oldest first."""
    runs = []
    for run_id in storage.list_dir(storage.join(root, "runs")):
        if not layout.RUN_ID.match(run_id):
            continue
        try:
            runs.append(RunManifest.load(root, run_id))
        except (StorageError, ValueError):
            continue
    return sorted(runs, key=lambda m: m.data.get("created_at", 0))
