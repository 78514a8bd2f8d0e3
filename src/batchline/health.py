"""The launcher's half of the monitor: mark registered models with how they fare.

The monitor stage judges each model on the outcomes that matured since it
scored (`stages/monitor.py`) and records the verdicts in its metrics. Once it
has committed, this module writes each registered model's latest judgement
beside it in the registry (`health.json`), where the promotion gate reads its
champion's and puts a degraded champion first in its reason, and where
`batchline models` and the report find it. A single model trained without
`segments:` is not registered; its judgement stays in the run's metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from batchline import fleet
from batchline.registry import Registry
from batchline.task import StageTask

log = logging.getLogger(__name__)


def settle(task: StageTask, metrics: Mapping[str, Any], problem: str | None) -> None:
    """Record each judged, registered model's health; nothing when the stage failed."""
    monitor = metrics.get("monitor") or {}
    judged = [m for m in monitor.get("by_model", []) if m.get("judged") and
              m.get("model_segment")]
    if problem is not None or not judged:
        return
    registry = Registry(task.storage_root, fleet.pipeline_name(task.placement))
    marked = 0
    for model in judged:
        metric = monitor["metric"]
        health = {"degraded": model["degraded"], "metric": metric, "value": model[metric],
                  "training": model["training"], "tolerance": monitor["tolerance"],
                  "labelled": model["labelled"], "run_id": task.run_id,
                  "at": round(time.time(), 3)}
        marked += registry.record_health(model["model_segment"], model["model_version"],
                                         health)
    log.info("monitor: registry %s: health of %d models recorded (%d degraded)", registry.uri,
             marked, sum(m["degraded"] for m in judged))


def describe(health: Mapping[str, Any], version: str) -> str:
    """A degraded champion, in the words the promotion gate puts first."""
    return (f"champion {version} is degraded: {health['metric']} {health['value']:.4f} on "
            f"{health['labelled']:,} matured outcomes against {health['training']:.4f} at "
            f"training (monitor run {health['run_id']})")
