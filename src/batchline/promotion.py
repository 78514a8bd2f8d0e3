"""The launcher's half of a fleet's promotion gate: move the aliases, once the fleet is judged.

Each training worker judges its segments' challengers (`stages/fleet_gate.py`)
and writes the verdicts into its leaderboard, but moves nothing: a worker
cannot know whether the whole fleet will stand, and on S3 a conditional
write needs the S3 SDK, which stage images do not carry. After train commits
and the launcher has judged the fleet against `max_failed_fraction`, this
module moves each winner's `champion` alias (and each refused model's
`challenger`) by a conditional write that another run may win first,
records every decision in the registry, and republishes the serving
snapshot. A fleet that fails promotes nothing; each decision says so.

Settling is idempotent, so a launcher that resumes after dying halfway
settles the rest: an alias this run already moved counts as this run's win.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from batchline import fleet, registry_serving
from batchline.registry import Registry
from batchline.task import StageTask

log = logging.getLogger(__name__)


def settle(task: StageTask, metrics: Mapping[str, Any], problem: str | None) -> None:
    """Apply the gate's verdicts of a committed fleet train (a single model: nothing)."""
    if "segments_trained" not in metrics:
        return
    registry = Registry(task.storage_root, fleet.pipeline_name(task.placement))
    counts: Counter[str] = Counter()
    for entry in fleet.read_leaderboard(task.outputs["model"]):
        verdict = entry.get("decision")
        if verdict:
            decision = apply(registry, entry["segment"], verdict, task.run_id, problem)
            counts["promoted" if decision["promoted"] else "not promoted"] += 1
    if problem is None:
        # A scoring-only run reads the champions from this snapshot.
        registry_serving.publish(registry, task.run_id)
    log.info("train: registry %s: %s", registry.uri,
             ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "no decisions")


def apply(registry: Registry, key: str, verdict: Mapping[str, Any], run_id: str,
          problem: str | None) -> dict[str, Any]:
    """Carry out one segment's verdict; record and return the decision as it ended."""
    version = str(verdict["version"])
    decision = {k: v for k, v in verdict.items() if k != "promote"}
    if problem is not None:
        return _record(registry, key, run_id, decision, False,
                       f"the fleet failed, so nothing was promoted; the gate had said: "
                       f"{verdict['reason']}")
    if not verdict["promote"]:
        if verdict["reason"] != fleet.ALREADY_CHAMPION:
            current = registry.alias(key, "challenger")
            if current is None or current.version != version:
                registry.move(key, "challenger", version,
                              current.version if current else None,
                              run_id=run_id, by="gate", reason=str(verdict["reason"]))
        return _record(registry, key, run_id, decision, False, str(verdict["reason"]))
    moved = registry.move(key, "champion", version, verdict.get("champion_version"),
                          run_id=run_id, by="gate", reason=str(verdict["reason"]))
    now = moved.alias
    if moved.won or (now is not None and now.version == version and now.run_id == run_id):
        return _record(registry, key, run_id, decision, True, str(verdict["reason"]))
    return _record(registry, key, run_id, decision, False,
                   f"{moved.reason} (this run's own scores used version {version})")


def _record(registry: Registry, key: str, run_id: str, decision: dict[str, Any],
            promoted: bool, reason: str) -> dict[str, Any]:
    decision = {**decision, "promoted": promoted, "reason": reason}
    registry.record_decision(key, run_id, decision)
    return decision
