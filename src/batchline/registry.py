"""A model registry in the storage root, with no server.

    registry/<pipeline>/<segment>/<version>/model.txt      LightGBM text, never pickle
    registry/<pipeline>/<segment>/<version>/version.json   sha256, metrics, leaderboard row,
                                                           lineage (run, inputs, code, spec)
    registry/<pipeline>/<segment>/aliases/<alias>.json     champion, challenger
    registry/<pipeline>/<segment>/decisions/<run>.json     a promotion gate's verdict

A version is named by its model's sha256 (the first 12 hex digits, as the
run's `model_version`), so registering the same model twice is one version.
`version.json` is written last and only if absent: its presence commits the
version. Aliases are small objects replaced only if unchanged since they were
read (`conditional.py`: S3 conditional writes, a local rename under a lock),
so of two runs promoting one segment at once exactly one wins and the other
is told which version won and who promoted it. Training workers only read
and register (plain storage); aliases are moved by the launcher
(`promotion.py`) and by `batchline models`, which carry the S3 SDK.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from batchline import storage
from batchline.conditional import conditional_object
from batchline.errors import DataError, SpecError, StorageError

ALIASES = ("champion", "challenger")
HISTORY = 20  # earlier champions kept in the alias, for rollback
# beside a version: the monitor stage's latest judgement of it on matured outcomes
HEALTH = "health.json"


@dataclass(frozen=True)
class Alias:
    """Where an alias points, who moved it there and why; `tag` names this state."""

    name: str
    version: str
    run_id: str
    by: str
    reason: str
    at: float
    history: list[str] = field(default_factory=list)  # earlier versions, latest first
    tag: str = ""

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("tag")
        return json.dumps(data, indent=1, sort_keys=True).encode()


@dataclass(frozen=True)
class Moved:
    """The end of an attempt to move an alias: won, or lost to `current`."""

    won: bool
    alias: Alias | None  # the alias as it now stands
    reason: str = ""


class Registry:
    """The registry of one pipeline under a storage root."""

    def __init__(self, root: str, pipeline: str) -> None:
        self.root = root.rstrip("/")
        self.pipeline = pipeline
        self.uri = storage.join(self.root, "registry", pipeline)

    # -- reading --------------------------------------------------------------------------
    def segments(self) -> list[str]:
        """Segments with at least one registered version (or alias)."""
        # `_serving` is the champions' snapshot (registry_serving.py), not a segment.
        return [name for name in storage.list_dir(self.uri) if name != "_serving"]

    def versions(self, segment: str) -> list[dict[str, Any]]:
        """Every committed version of a segment, oldest first."""
        out = []
        for name in storage.list_dir(storage.join(self.uri, segment)):
            if name in ("aliases", "decisions"):
                continue
            record = self._version_record(segment, name)
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: (r["registered_at"], r["version"]))

    def version(self, segment: str, version: str) -> dict[str, Any]:
        """One version's record; a clear error if it is not registered."""
        record = self._version_record(segment, version)
        if record is None:
            known = [r["version"] for r in self.versions(segment)]
            raise SpecError(f"model {self.pipeline}/{segment} has no version {version!r}; "
                            f"registered: {', '.join(known) or 'none'}")
        return record

    def model_text(self, segment: str, version: str) -> bytes:
        """The model's LightGBM text, checked against its registered sha256."""
        record = self.version(segment, version)
        text = storage.read_bytes(storage.join(self.uri, segment, version, "model.txt"))
        if hashlib.sha256(text).hexdigest() != record["model_sha256"]:
            raise DataError(f"{storage.join(self.uri, segment, version, 'model.txt')} does not "
                            "match its registered sha256; it was changed after registration")
        return text

    def alias(self, segment: str, name: str = "champion") -> Alias | None:
        """Where an alias points now, or None. A plain read (no tag): what a training
        worker judges against, with the storage client every stage image has."""
        _check_alias(name)
        data = _read_if_present(self._alias_uri(segment, name))
        return None if data is None else Alias(**json.loads(data))

    def _tagged(self, segment: str, name: str) -> Alias | None:
        """The alias with the tag a conditional move needs (S3's ETag: boto3)."""
        current = conditional_object(self._alias_uri(segment, name)).read()
        if current is None:
            return None
        data, tag = current
        return Alias(**json.loads(data), tag=tag)

    def decisions(self, segment: str) -> list[dict[str, Any]]:
        """The promotion gate's recorded decisions for a segment, oldest first."""
        folder = storage.join(self.uri, segment, "decisions")
        out = [json.loads(storage.read_bytes(storage.join(folder, name)))
               for name in storage.list_dir(folder) if name.endswith(".json")]
        return sorted(out, key=lambda d: d.get("at", 0))

    def file(self, segment: str, version: str, name: str) -> bytes | None:
        """A file registered beside a version's model (its drift profile), or None."""
        return _read_if_present(storage.join(self.uri, segment, version, _file_name(name)))

    def decision(self, segment: str, run_id: str) -> dict[str, Any] | None:
        """The decision one run's gate made for a segment, as it ended; None if none."""
        data = _read_if_present(storage.join(self.uri, segment, "decisions", f"{run_id}.json"))
        record: dict[str, Any] | None = None if data is None else json.loads(data)
        return record

    def health(self, segment: str, version: str) -> dict[str, Any] | None:
        """What the latest monitor found of a version on matured outcomes, or None."""
        data = self.file(segment, version, HEALTH)
        record: dict[str, Any] | None = None if data is None else json.loads(data)
        return record

    # -- writing --------------------------------------------------------------------------
    def record_health(self, segment: str, version: str, health: dict[str, Any]) -> bool:
        """Mark a registered version with the monitor's latest judgement (a plain write:
        the newest judgement stands); False if the version is not registered here."""
        if self._version_record(segment, version) is None:
            return False
        storage.write_bytes(storage.join(self.uri, segment, version, HEALTH),
                            json.dumps(health, indent=1, sort_keys=True).encode())
        return True

    def register(self, segment: str, model_text: bytes, record: dict[str, Any],
                 files: dict[str, bytes] | None = None) -> str:
        """Add a model version (idempotent: the same model is the same version); its id.

        `record` holds what the version is judged and traced by: metrics, the
        leaderboard row, lineage (run id, input fingerprints, code version,
        spec hash).
        """
        digest = hashlib.sha256(model_text).hexdigest()
        version = digest[:12]
        if self._version_record(segment, version) is not None:
            return version
        folder = storage.join(self.uri, segment, version)
        storage.write_bytes(storage.join(folder, "model.txt"), model_text)
        for name, content in (files or {}).items():  # beside the model: its drift profile
            storage.write_bytes(storage.join(folder, _file_name(name)), content)
        full = {**record, "pipeline": self.pipeline, "segment": segment, "version": version,
                "model_sha256": digest, "registered_at": time.time()}
        # A plain write (training workers register; they carry no S3 SDK): two runs
        # registering the very same model at once both write it, and the last
        # record's lineage stands. The model text is the same either way.
        storage.write_bytes(storage.join(folder, "version.json"),
                            json.dumps(full, indent=1, sort_keys=True).encode())
        return version

    def move(self, segment: str, name: str, version: str, expected: str | None, *,
             run_id: str = "", by: str, reason: str) -> Moved:
        """Point alias `name` at `version` if it still points at `expected` (the version
        the caller judged against; None: no alias yet).

        The check and the write are one conditional write on the state read, so
        of two callers that judged against the same version exactly one moves
        it; the other gets `won=False` and the alias as the winner left it.
        """
        _check_alias(name)
        self.version(segment, version)  # only registered versions can be promoted
        current = self._tagged(segment, name)
        if (current.version if current else None) != expected:
            return Moved(False, current, lost_reason(current, name))
        history = [] if current is None else \
            [current.version, *[v for v in current.history if v != current.version]][:HISTORY]
        new = Alias(name, version, run_id, by, reason, time.time(), history)
        target = conditional_object(self._alias_uri(segment, name))
        won = target.create(new.to_json()) if current is None else \
            target.replace(new.to_json(), current.tag)
        now = self._tagged(segment, name)
        return Moved(True, now) if won else Moved(False, now, lost_reason(now, name))

    def promote(self, segment: str, version: str, *, by: str, reason: str,
                run_id: str = "") -> Moved:
        """Make `version` the champion now (a person's decision: no gate)."""
        current = self._tagged(segment, "champion")
        if current is not None and current.version == version:
            return Moved(False, current, f"version {version} is already the champion")
        return self.move(segment, "champion", version, current.version if current else None,
                         run_id=run_id, by=by, reason=reason)

    def rollback(self, segment: str, *, by: str, reason: str = "rollback") -> Moved:
        """Make the previous champion the champion again."""
        current = self._tagged(segment, "champion")
        if current is None or not current.history:
            raise SpecError(f"model {self.pipeline}/{segment} has no earlier champion to roll "
                            "back to (`batchline models show` lists its versions; promote "
                            "one by name)")
        back = current.history[0]
        new = Alias("champion", back, "", by, reason, time.time(), current.history[1:])
        target = conditional_object(self._alias_uri(segment, "champion"))
        won = target.replace(new.to_json(), current.tag)
        now = self._tagged(segment, "champion")
        return Moved(won, now, "" if won else lost_reason(now))

    def record_decision(self, segment: str, run_id: str, decision: dict[str, Any]) -> None:
        """Keep a promotion gate's decision (and its numbers) beside the segment's models."""
        uri = storage.join(self.uri, segment, "decisions", f"{run_id}.json")
        storage.write_bytes(uri, json.dumps({**decision, "run_id": run_id},
                                            indent=1, sort_keys=True).encode())

    # -- helpers --------------------------------------------------------------------------
    def _alias_uri(self, segment: str, name: str) -> str:
        return storage.join(self.uri, segment, "aliases", f"{name}.json")

    def _version_record(self, segment: str, version: str) -> dict[str, Any] | None:
        try:
            data = storage.read_bytes(storage.join(self.uri, segment, version, "version.json"))
        except StorageError:
            return None
        record: dict[str, Any] = json.loads(data)
        return record


def lost_reason(current: Alias | None, name: str = "champion") -> str:
    """Why a conditional move lost: who moved the alias first, and to what."""
    if current is None:
        return f"the {name} was removed while this decision was made"
    who = f"run {current.run_id}" if current.run_id else current.by
    return (f"{who} moved {current.name} to version {current.version} first "
            f"({current.reason}); this decision was made against the earlier {current.name}")


def _read_if_present(uri: str) -> bytes | None:
    """An object's bytes, or None when it does not exist; any other failure is raised."""
    try:
        return storage.read_bytes(uri)
    except StorageError:
        if storage.exists(uri):
            raise
        return None


def _file_name(name: str) -> str:
    if name in ("model.txt", "version.json") or "/" in name or not name.endswith(".json"):
        raise ValueError(f"{name!r} cannot be registered beside a model")
    return name


def _check_alias(name: str) -> None:
    if name not in ALIASES:
        raise SpecError(f"unknown alias {name!r}; aliases: {', '.join(ALIASES)}")
