"""The pure parts of a fleet (one model per segment): names, plan, packing, verdict.

Light on purpose (no Arrow compute, no LightGBM): the train stage uses it to
decide which segments get a model and which worker trains each, the launcher
to merge its workers' metrics and to judge the fleet, the CLI to read the
leaderboard.

A segment's *key* is its value when that is a safe path segment (`H017`),
else a readable slug with a hash; the value itself is kept beside the model.
The global model (trained on every labelled row, the fallback for small and
unseen segments) has the key `_global`, which no segment value maps to.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchline import storage
from batchline.errors import DataError, StorageError

GLOBAL = "_global"
LEADERBOARD = "leaderboard.json"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The gate's verdict on a model that is the champion already (nothing to move).
ALREADY_CHAMPION = "the same model is the champion already"
# How an entry of the leaderboard ended.
OK, FAILED, FALLBACK = "ok", "failed", "fallback"


def segment_key(value: str | None) -> str:
    """The name a segment's models go under in storage and in the registry."""
    if value is None:
        return "null-segment"
    if _SAFE.fullmatch(value) and value != "null-segment":
        return value
    slug = re.sub(r"[^A-Za-z0-9]+", "-", value).strip("-")[:40] or "segment"
    return f"{slug}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"


def model_file(key: str, suffix: str) -> str:
    """The file of a model in the train stage's `model` dataset: the global model keeps
    the single-model names (model.txt, model.json), so anything that reads one model
    reads the fallback."""
    return f"model.{suffix}" if key == GLOBAL else f"segment-{key}.model.{suffix}"


@dataclass(frozen=True)
class Plan:
    """Which segments get a model of their own, and which fall back to the global one."""

    own: dict[str, int]        # key -> labelled rows, at least min_rows
    fallback: dict[str, int]   # key -> labelled rows, fewer than min_rows
    values: dict[str, str | None]  # key -> the segment's value
    rows: int                  # every labelled row (the global model's)

    def work(self) -> dict[str, int]:
        """Every model to train, with its size: the global one and each own segment."""
        return {GLOBAL: self.rows, **self.own}


def plan(counts: Mapping[str | None, int], min_rows: int) -> Plan:
    """Split segments by size; rows without a segment value are scored by the global model."""
    own: dict[str, int] = {}
    fallback: dict[str, int] = {}
    values: dict[str, str | None] = {}
    for value, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        key = segment_key(value)
        values[key] = value
        (own if value is not None and n >= min_rows else fallback)[key] = int(n)
    return Plan(own, fallback, values, int(sum(counts.values())))


def pack(sizes: Mapping[str, int], shards: int) -> list[list[str]]:
    """Segments packed into `shards` bins by size, largest first, each to the least loaded.

    Deterministic (ties go by key, then to the lowest shard), so every worker
    computes the same packing from the same counts and takes its own bin.
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    bins: list[list[str]] = [[] for _ in range(shards)]
    load = [0] * shards
    for key, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        target = min(range(shards), key=lambda i: (load[i], i))
        bins[target].append(key)
        load[target] += size
    return bins


def merge_metrics(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One fleet's metrics from its workers' commits: the global model's headline figures
    (from the worker that trained it), the segment counts, and every failed segment."""
    merged: dict[str, Any] = {}
    counts = {"segments_trained": 0, "segments_failed": 0, "segments_fallback": 0,
              "segments_promoted": 0}
    failed: list[str] = []
    warnings: list[str] = []
    for part in parts:
        if part.get("trained_global"):
            merged.update({k: v for k, v in part.items() if k not in counts})
        for name in counts:
            counts[name] += int(part.get(name, 0))
        failed += list(part.get("failed_parts", []))
        warnings += [w for w in part.get("warnings", []) if w not in warnings]
    merged.update(counts)
    merged["failed_parts"] = sorted(failed)
    warning = failure_warning(merged)
    merged["warnings"] = [*warnings, *([warning] if warning else [])]
    return merged


def verdict(metrics: Mapping[str, Any]) -> str | None:
    """Why the fleet fails (more failed segments than its `max_failed_fraction`, which
    train records in its metrics), or None when it stands (and for a single model)."""
    max_failed_fraction = float(metrics.get("max_failed_fraction", 1.0))
    failed = int(metrics.get("segments_failed", 0))
    total = failed + int(metrics.get("segments_trained", 0))
    if not failed or total == 0 or failed / total <= max_failed_fraction:
        return None
    names = ", ".join(metrics.get("failed_parts", [])[:10])
    return (f"{failed} of {total} segment models failed ({names}), more than "
            f"segments.max_failed_fraction {max_failed_fraction}; see the leaderboard "
            "(batchline models leaderboard RUN) for each cause, fix the data or raise the "
            "fraction, then resume: only the failed segments are trained again")


def failure_warning(metrics: Mapping[str, Any]) -> str | None:
    """The run summary's line about failed segments that stayed under the limit."""
    failed = list(metrics.get("failed_parts", []))
    if not failed:
        return None
    return (f"{len(failed)} segment models failed ({', '.join(failed[:10])}); their rows are "
            "scored by the global model. `batchline resume RUN` trains only them again")


def leaderboard_rows(files: Iterable[bytes]) -> list[dict[str, Any]]:
    """The workers' leaderboard files as one list, global model first, then by segment."""
    rows = [row for data in files for row in json.loads(data)]
    return sorted(rows, key=lambda r: (r["segment"] != GLOBAL, str(r["segment"])))


def read_leaderboard(model_uri: str) -> list[dict[str, Any]]:
    """The leaderboard of a committed fleet `model` dataset (every worker's part)."""
    record = storage.committed(model_uri)
    files = [storage.read_bytes(storage.join(model_uri, f.path)) for f in record.files
             if f.path.rsplit("/", 1)[-1] == LEADERBOARD]
    if not files:
        raise StorageError(f"{model_uri} holds no {LEADERBOARD}: it is a single model, "
                                   "not a fleet (the spec has no segments:)")
    return leaderboard_rows(files)


def pipeline_name(placement: Mapping[str, Any]) -> str:
    """The pipeline the registry files a run's models under (the task's placement)."""
    name = placement.get("pipeline")
    if not name:
        raise DataError("the task names no pipeline (placement.pipeline); a fleet's models "
                        "are registered under it: run it through batchline run")
    return str(name)
