"""The run manifest: every state change of a run, stage by stage, next to the data.

Typed (pydantic) so that states are enums, attempts are records, and a
manifest written by an older batchline still reads: `schema_version` 1 (no
version field) is upgraded on load. It is rewritten atomically (see
storage.write_bytes) at each change, so `batchline status` and `batchline
resume` always read a consistent picture, even of a run whose launcher was
killed. The manifest is saved under the storage root it was opened from,
never under the root it records, so a copied root stays self-contained.
"""

from __future__ import annotations

import enum
import json
import os
import time
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from batchline import layout, storage
from batchline.causes import Cause
from batchline.errors import StorageError

SCHEMA_VERSION = 2


def heartbeat_seconds() -> float:
    """How often a running launcher rewrites the manifest's heartbeat."""
    return float(os.environ.get("BATCHLINE_HEARTBEAT_SECONDS", "15"))


def stale_after_seconds() -> float:
    # Six heartbeats (and past the lease's time to live): a launcher that is
    # only slow, in a long storage retry, is not called stale.
    return 6 * heartbeat_seconds()


class StageState(enum.StrEnum):
    """Where one stage of a run is."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REUSED = "reused"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        """Committed outputs exist for this stage (run now or reused)."""
        return self in (StageState.SUCCEEDED, StageState.REUSED)

    @property
    def ended(self) -> bool:
        return self not in (StageState.PENDING, StageState.RUNNING)


class RunState(enum.StrEnum):
    """Where a whole run is."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self not in (RunState.PENDING, RunState.RUNNING)


class _Record(BaseModel):
    # Fields a newer batchline adds are kept out rather than refused, so an
    # older CLI can still show a newer run; enums stay strict.
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


class Attempt(_Record):
    """One attempt of a stage (or of one shard), recorded when it starts."""

    number: int = Field(ge=1)
    shard: int | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    cause: Cause | None = None  # None while it runs
    exit_code: int | None = None
    message: str = ""
    backend_ref: str = ""
    logs: list[str] = Field(default_factory=list)


class StageRecord(_Record):
    """What the manifest knows about one stage of the run."""

    state: StageState = StageState.PENDING
    phase: str = ""  # pending/running as the platform reports it
    attempts: list[Attempt] = Field(default_factory=list)
    cache_key: str = ""
    key_parts: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    error: str = ""
    cause: Cause | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    fingerprints: dict[str, str] = Field(default_factory=dict)
    rows: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None

    def next_attempt(self) -> int:
        """Attempt numbers only grow, so no task or log is ever overwritten."""
        return max((a.number for a in self.attempts), default=0) + 1

    def open_attempt(self) -> int | None:
        """The latest attempt if some part of it never ended (its launcher went away)."""
        if not self.attempts:
            return None
        latest = max(a.number for a in self.attempts)
        return latest if any(a.ended_at is None for a in self.attempts
                             if a.number == latest) else None


class Event(_Record):
    t: float
    stage: str
    state: StageState
    reason: str = ""
    attempt: int | None = None


class Change(_Record):
    """A change made to a run after it was created (`resume --set`)."""

    t: float
    by: str
    fields: dict[str, Any]


class RunManifest(_Record):
    """One run's manifest; `save()` writes it where it was loaded or created."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    pipeline: str
    storage_root: str
    backend: str
    spec: dict[str, Any]
    selected_stages: list[str]
    state: RunState = RunState.PENDING
    created_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    # Written by the launcher at least every heartbeat_seconds() while it runs:
    # a running run whose heartbeat stopped has lost its launcher (`stale`).
    heartbeat_at: float | None = None
    reason: str = ""  # why the run failed or was cancelled, when no stage says it
    cause: Cause | None = None
    backend_options: dict[str, Any] = Field(default_factory=dict)
    force: list[str] = Field(default_factory=list)
    verify: bool = False
    changes: list[Change] = Field(default_factory=list)
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list)
    _root: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version", 1) == 1:
            data = {**data, "schema_version": SCHEMA_VERSION,
                    "stages": {name: _upgrade_stage(entry)
                               for name, entry in (data.get("stages") or {}).items()}}
        return data

    @classmethod
    def new(cls, root: str, run_id: str, pipeline: str, backend: str, spec: dict[str, Any],
            stages: list[str]) -> RunManifest:
        now = time.time()
        manifest = cls(run_id=run_id, pipeline=pipeline, storage_root=root, backend=backend,
                       spec=spec, selected_stages=stages, created_at=now, updated_at=now,
                       stages={s: StageRecord() for s in stages})
        manifest._root = root
        return manifest

    @classmethod
    def load(cls, root: str, run_id: str) -> RunManifest:
        """The run's manifest under `root`; StorageError if absent or unreadable."""
        uri = layout.manifest_uri(root, run_id)
        try:
            text = storage.read_text(uri)
        except StorageError:
            raise StorageError(f"no run {run_id!r} under {root} (no {uri}); "
                               "`batchline runs` lists the runs") from None
        try:
            manifest = cls.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise StorageError(f"the manifest of run {run_id!r} ({uri}) is unreadable: "
                               f"{_first_line(exc)}; it was truncated or edited. Restore it "
                               "from a backup, or start a new run") from None
        manifest._root = root
        return manifest

    @property
    def root(self) -> str:
        return self._root or self.storage_root

    @property
    def created_day(self) -> date:
        """The day (UTC) the run was created: "today" for everything the run judges by date,
        the same on every retry and resume of the run."""
        return datetime.fromtimestamp(self.created_at, UTC).date()

    def shown_state(self, now: float | None = None) -> str:
        """The state to show: `stale` for a pending or running run whose launcher
        stopped writing its heartbeat (killed without a word); `resume` takes over."""
        if self.state in (RunState.PENDING, RunState.RUNNING):
            last = self.heartbeat_at or self.updated_at
            if (now or time.time()) - last > stale_after_seconds():
                return "stale"
        return str(self.state)

    def stage(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord())

    def event(self, stage: str, state: StageState, attempt: int | None = None,
              **fields: Any) -> None:
        """Record a state change of a stage (fields of its StageRecord) and save."""
        now = time.time()
        entry = self.stage(stage)
        entry.state = state
        for key, value in fields.items():
            setattr(entry, key, value)
        if state is StageState.RUNNING and entry.started_at is None:
            entry.started_at = now
        if state.ended:
            entry.ended_at = now
        self.events.append(Event(t=now, stage=stage, state=state,
                                 reason=str(fields.get("reason", "")),
                                 attempt=attempt))
        self.save()

    def set_state(self, state: RunState, reason: str = "", cause: Cause | None = None) -> None:
        self.state = state
        if reason:
            self.reason = reason
        if cause is not None:
            self.cause = cause
        if state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
            self.ended_at = time.time()
        self.save()

    def beat(self) -> None:
        """Save with a fresh heartbeat if the last one is getting old."""
        if time.time() - (self.heartbeat_at or 0.0) >= heartbeat_seconds():
            self.save()

    def save(self) -> None:
        self.updated_at = time.time()
        if self.state in (RunState.PENDING, RunState.RUNNING):
            self.heartbeat_at = self.updated_at
        storage.write_text(layout.manifest_uri(self.root, self.run_id),
                           self.model_dump_json(indent=2))


def _upgrade_stage(entry: Any) -> Any:
    """A schema-1 stage entry: attempts were {attempt, cause, ..., log} dicts."""
    if not isinstance(entry, dict):
        return entry
    attempts = [{**a, "number": a.get("attempt", i + 1),
                 "logs": [a["log"]] if a.get("log") else []}
                for i, a in enumerate(entry.get("attempts") or []) if isinstance(a, dict)]
    return {**entry, "attempts": attempts}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def list_runs(root: str) -> tuple[list[RunManifest], list[str]]:
    """Every readable run under a storage root, oldest first, and the unreadable run ids."""
    runs, unreadable = [], []
    for run_id in storage.list_dir(storage.join(root, "runs")):
        if not layout.RUN_ID.fullmatch(run_id):
            continue
        try:
            runs.append(RunManifest.load(root, run_id))
        except StorageError:
            unreadable.append(run_id)
    return sorted(runs, key=lambda m: m.created_at), unreadable
