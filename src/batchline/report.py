"""The machine-readable run report: what `--json` prints, with a documented schema.

One document per run (`run`, `resume`, `wait`, `status` with `--json`). The
schema is versioned by `schema`; fields are only ever added within a version.
docs/run-report.schema.json is generated from these models (a test keeps it
current), so CI scripts can validate what they parse.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from batchline import layout
from batchline.manifest import RunManifest

SCHEMA = "batchline.run/1"


class StageReport(BaseModel):
    """One stage of the run."""

    state: str = Field(description="pending, running, succeeded, reused, failed, skipped or "
                       "cancelled")
    cause: str | None = Field(description="why it ended, when it failed or was cancelled: "
                              "bad_input, out_of_memory, evicted, image_pull, unschedulable, "
                              "deadline, user_error, cancelled")
    reason: str = Field(description="why it ran or was reused, or what to do after a failure")
    error: str = Field(description="the failure's own message")
    attempts: int = Field(description="attempts started (shards counted once)")
    rows: int | None = Field(description="rows of its primary output")
    metrics: dict[str, Any] = Field(description="the stage's headline metrics")
    outputs: dict[str, str] = Field(description="committed output URIs by name")
    fingerprints: dict[str, str] = Field(description="sha256 over each output's files")
    logs: list[str] = Field(description="log URIs of its last attempt")


class RunReport(BaseModel):
    """A run as CI sees it."""

    schema_: Literal["batchline.run/1"] = Field("batchline.run/1", alias="schema")
    run_id: str
    pipeline: str
    state: str = Field(description="pending, running, succeeded, failed, cancelled, or stale "
                       "(its launcher stopped without a word; `batchline resume` takes over)")
    exit_code: int = Field(description="the CLI's exit code for this run: 0 succeeded, "
                           "2 bad input, 3 failed otherwise, 130 cancelled")
    cause: str | None
    reason: str
    backend: str
    storage_root: str
    manifest: str = Field(description="URI of the run's manifest.json")
    created_at: float
    ended_at: float | None
    elapsed_seconds: float
    changes: list[dict[str, Any]] = Field(description="changes made on resume (`--set`)")
    stages: dict[str, StageReport]

    model_config = {"populate_by_name": True}


def run_report(manifest: RunManifest) -> RunReport:
    from batchline.client import exit_code

    stages = {}
    for name, entry in manifest.stages.items():
        last = max((a.number for a in entry.attempts), default=None)
        stages[name] = StageReport(
            state=str(entry.state), cause=str(entry.cause) if entry.cause else None,
            reason=entry.reason, error=entry.error,
            attempts=len({a.number for a in entry.attempts}), rows=entry.rows,
            metrics=entry.metrics, outputs=entry.outputs, fingerprints=entry.fingerprints,
            logs=[u for a in entry.attempts if a.number == last for u in a.logs])
    end = manifest.ended_at or time.time()
    return RunReport(
        run_id=manifest.run_id, pipeline=manifest.pipeline, state=manifest.shown_state(),
        exit_code=exit_code(manifest), cause=str(manifest.cause) if manifest.cause else None,
        reason=manifest.reason, backend=manifest.backend, storage_root=manifest.root,
        manifest=layout.manifest_uri(manifest.root, manifest.run_id),
        created_at=manifest.created_at, ended_at=manifest.ended_at,
        elapsed_seconds=round(end - manifest.created_at, 3),
        changes=[c.model_dump(mode="json") for c in manifest.changes], stages=stages)


def to_json(manifest: RunManifest) -> str:
    return run_report(manifest).model_dump_json(by_alias=True, indent=2)


def json_schema() -> dict[str, Any]:
    return RunReport.model_json_schema(by_alias=True)
