"""The registry's serving snapshot: every segment's champion as one committed dataset.

    registry/<pipeline>/_serving/_SUCCESS.json (+ data-*/leaderboard.json, model files)

It has the layout of a fleet train's `model` output (a leaderboard naming
the serving version of each segment, and each champion's model text and
card), so score reads it the same way. A scoring-only run points score at
it (`stages.score.inputs.model: <root>/registry/<pipeline>/_serving`) and
needs nothing else from any training run; its fingerprint changes whenever
a champion does, so a rerun scores again exactly when the champions moved.

Republished by the launcher once it settles a fleet's promotions and by `batchline
models promote|rollback|publish`. Publishers do not lock one another: each
commit is a complete snapshot of the aliases as its publisher read them, and
the last commit stands; a snapshot that missed a concurrent promotion is
corrected by the next publish.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from batchline import fleet, psi, storage
from batchline.registry import Registry

SERVING = "_serving"  # no segment key starts with "_" but the global model's
# Data prefixes of other publishers younger than this are never removed: one
# may still be writing.
KEEP_SECONDS = 600


def serving_uri(registry: Registry) -> str:
    """Where the pipeline's serving snapshot is committed."""
    return storage.join(registry.uri, SERVING)


def champions(registry: Registry) -> dict[str, str]:
    """Segment key -> the champion's version, for every segment that has one."""
    out = {}
    for segment in registry.segments():
        alias = registry.alias(segment)
        if alias is not None:
            out[segment] = alias.version
    return out


def publish(registry: Registry, run_id: str = "registry") -> str | None:
    """Commit the snapshot of the current champions; None when it is already current (or
    there is no champion yet). Returns the snapshot's URI."""
    current = champions(registry)
    if fleet.GLOBAL not in current:
        return None
    key = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
    uri = serving_uri(registry)
    record = storage.read_success(uri)
    if record is not None and record.meta.get("cache_key") == key:
        return uri
    stamp = storage.Stamp(run_id=run_id, stage="registry", cache_key=key)
    board: list[dict[str, Any]] = []
    with storage.DatasetWriter(uri, stamp, stale_before=time.time() - KEEP_SECONDS) as out:
        for segment, version in sorted(current.items()):
            card = registry.version(segment, version)["card"]
            out.write_file(fleet.model_file(segment, "txt"),
                           registry.model_text(segment, version))
            out.write_file(fleet.model_file(segment, "json"),
                           json.dumps(card, indent=2, sort_keys=True).encode())
            profile = registry.file(segment, version, psi.PROFILE)
            if profile is not None:
                out.write_file(fleet.model_file(segment, psi.PROFILE), profile)
            board.append({"segment": segment, "value": card.get("segment_value"),
                          "status": fleet.OK, "model_version": version,
                          "serving_version": version})
        out.write_file(fleet.LEADERBOARD, json.dumps(board, indent=1, sort_keys=True).encode())
        out.commit({"segments": len(current), "champions": current})
    return uri
