"""What a backend is asked to run (StageTask) and what it reports (StageResult).

These two types are the whole contract between the launcher, the backends and
the stage entrypoint: a backend serialises a StageTask to JSON, starts
`python -m batchline.stage <stage> --task <uri>` somewhere, and translates
whatever its platform reports back into a StageResult with one Cause.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from batchline import layout, storage
from batchline.causes import Cause

__all__ = ["Cause", "Resources", "StageResult", "StageTask"]


@dataclass(frozen=True)
class Resources:
    """Compute asked for one stage; strings use Kubernetes quantities."""

    cpu: str = "1"
    memory: str = "2Gi"
    timeout_seconds: int = 3600


@dataclass(frozen=True)
class StageTask:
    """One attempt of one stage (or one shard of it), fully resolved.

    Inputs and outputs map names to dataset URIs under the storage root, so a
    stage never builds a path itself: it opens its outputs with `writer()`,
    which picks this shard's own URI and stamps the commit with the cache key,
    code version and lineage. `task_uri` is where the launcher stored this
    task as JSON; the stage entrypoint reads it back from there.
    """

    run_id: str
    stage: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    params: dict[str, Any]
    storage_root: str
    task_uri: str
    cache_key: str
    image: str = ""
    attempt: int = 1
    shard_index: int = 0
    shard_count: int = 1
    resources: Resources = field(default_factory=Resources)
    # Scheduling hints that only some backends use (Kubernetes nodeSelector,
    # tolerations); opaque to the stage itself.
    placement: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    # input name -> fingerprint of the committed dataset it was planned with
    lineage: dict[str, str] = field(default_factory=dict)
    # URIs of raw data outside the storage root that the stage reads
    sources: list[str] = field(default_factory=list)
    # data-* prefixes written before this time belong to ended attempts; None:
    # this writer is the only one, remove every other prefix on commit
    stale_before: float | None = None

    @property
    def name(self) -> str:
        """A short name for logs and for platform object names."""
        shard = f"-{self.shard_index}" if self.shard_count > 1 else ""
        return f"{self.run_id}-{self.stage}{shard}"

    @property
    def shard(self) -> int | None:
        """This task's shard index, or None when the stage is not sharded."""
        return self.shard_index if self.shard_count > 1 else None

    def to_json(self) -> str:
        # Keys keep their order: params such as ingest's `columns` are ordered
        # (the declared column order is the committed one).
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StageTask:
        data = json.loads(text)
        data["resources"] = Resources(**data.get("resources", {}))
        return cls(**data)

    def for_shard(self, index: int) -> StageTask:
        """The same task narrowed to one shard (fan-out, or an Indexed Job's pod)."""
        if not 0 <= index < self.shard_count:
            raise ValueError(f"shard index {index} is outside 0..{self.shard_count - 1}")
        return dataclasses.replace(self, shard_index=index)

    def output_uri(self, name: str) -> str:
        """Where this task commits output `name`: its own shard's dataset when sharded."""
        uri = self.outputs[name]
        return layout.shard_uri(uri, self.shard_index) if self.shard_count > 1 else uri

    def stamp(self) -> storage.Stamp:
        """What every commit of this task records about where its data came from."""
        return storage.Stamp(run_id=self.run_id, stage=self.stage, cache_key=self.cache_key,
                             code_version=self.code_version, shard=self.shard,
                             lineage=dict(self.lineage))

    def writer(self, name: str, schema: pa.Schema | None = None,
               row_group_rows: int | None = None) -> storage.DatasetWriter:
        """A DatasetWriter for output `name` of this task (its shard), stamped."""
        return storage.DatasetWriter(self.output_uri(name), self.stamp(), schema,
                                     stale_before=self.stale_before,
                                     row_group_rows=row_group_rows)


@dataclass(frozen=True)
class StageResult:
    """How one attempt of one stage ended, in backend-neutral terms."""

    stage: str
    cause: Cause
    exit_code: int | None = None
    message: str = ""
    log_tail: str = ""
    backend_ref: str = ""
    logs: tuple[str, ...] = ()  # URIs of the logs kept in storage

    @property
    def ok(self) -> bool:
        return self.cause is Cause.SUCCEEDED

    def advice(self) -> str:
        """One line a person can act on."""
        return self.cause.advice(self.stage, self.exit_code)
