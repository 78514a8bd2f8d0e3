"""The stage catalog: every stage is defined here, once.

A `StageDef` says what a stage is to the rest of batchline: its params model,
the datasets it reads and writes (by name), which params name data outside
the storage root, whether it can be sharded, which of its metrics the run
summary shows, and which pip extras its image needs. The launcher, the
pipeline graph, the CLI, render, the image build, bench and the tests all
derive from `STAGES`; nothing else lists stage names.

The stage code itself lives in `batchline.stages.<name>` and is imported only
when the stage runs (`StageDef.load()`), so planning a run never imports
LightGBM or DuckDB. Stages never import backends or the launcher.

Adding a stage: write `stages/<name>.py` with `run(task) -> dict`, its params
model in `params.py`, and one entry below (see docs/extending.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from batchline import fleet, health, promotion, psi
from batchline.errors import SpecError
from batchline.params import (
    FeaturesParams,
    IngestParams,
    MonitorParams,
    ScoreParams,
    TrainParams,
)
from batchline.params_checks import judged_by_date

if TYPE_CHECKING:
    from batchline.task import StageTask


@dataclass(frozen=True)
class StageDef:
    """One stage, as the launcher, the graph and the images see it."""

    name: str
    description: str
    params: type[BaseModel]
    # input name (as the stage code reads task.inputs[...]) -> dataset name
    inputs: Mapping[str, str] = field(default_factory=dict)
    # dataset names it commits; the first is the one whose rows the summary shows
    outputs: tuple[str, ...] = ()
    # params whose values are URIs of raw data outside the storage root: they
    # are fingerprinted for the cache key and mounted by the container backend
    source_params: tuple[str, ...] = ()
    # whether N workers may each compute a part (task.shard_index of shard_count)
    shardable: bool = False
    # success metrics (of its outputs' records) copied into the run manifest
    summary: tuple[str, ...] = ()
    # pip extras of batchline its image installs (see pyproject.toml)
    extras: tuple[str, ...] = ()
    # check every output file's sha256 before reusing it, not only its size
    # (small outputs that must never be used altered: models)
    verify_on_reuse: bool = False
    # the metrics of a sharded stage's union, from its shards' (default: none);
    # light functions only: the launcher calls them
    merge_shards: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    # judged on the committed metrics: a reason to fail the stage (exit 2), or None
    judge: Callable[[Mapping[str, Any]], str | None] | None = None
    # after the judge, in the launcher: act on the commit (a fleet's promotions), given
    # the task, the committed metrics and the judge's problem (None: it stands)
    settle: Callable[[StageTask, Mapping[str, Any], str | None], None] | None = None
    # given its params (as dumped), whether the stage's results depend on the day the run
    # was created, not only on its inputs (ingest's freshness checks): that day then joins
    # its cache key, so an unchanged source is judged again on a new day, not reused
    dated: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"

    def load(self) -> ModuleType:
        """The stage's code module (imports its heavy dependencies now)."""
        return importlib.import_module(self.module)


_DEFS = (
    StageDef("ingest", "raw CSV, JSON lines or Parquet to typed Parquet; bad rows quarantined",
             IngestParams, outputs=("encounters", "quarantine"), source_params=("source",),
             summary=("rows_in", "rows_committed", "rows_bad", "generator_best_auc",
                      "checks_warned"),
             extras=("ingest",), dated=judged_by_date),
    # optional: a spec that lists it joins the outcomes it ingests to earlier runs' scores.
    # Listed before train, so that (needing only ingest) it runs first and the promotion
    # gate of the same run reads the health it records of the champions.
    StageDef("monitor", "matured outcomes joined to earlier runs' predictions: accuracy "
             "per run, month, segment and model against training",
             MonitorParams, inputs={"outcomes": "encounters"}, outputs=("accuracy",),
             summary=("outcomes_matched", "degraded_alerts"), extras=("model", "features"),
             # registered models (a fleet's) get the verdict beside them in the registry
             settle=health.settle),
    StageDef("features", "the spec's feature SQL, run by DuckDB",
             FeaturesParams, inputs={"encounters": "encounters"}, outputs=("features",),
             extras=("features",)),
    StageDef("train", "LightGBM on the labelled rows; model saved as text",
             TrainParams, inputs={"features": "features"}, outputs=("model",),
             summary=("auc_valid", "logloss_valid", "calibration_ece", "rmse_valid",
                      "mae_valid", "r2_valid", "multi_logloss_valid", "accuracy_valid",
                      "best_iteration", "model_version", "search_candidates",
                      "search_stopped_by", "search_gain_valid",
                      # a fleet's (spec `segments:`)
                      "segments_trained", "segments_promoted", "segments_failed",
                      "segments_fallback"),
             # search: Optuna, imported only when a spec has a `search:` section
             extras=("model", "search"), verify_on_reuse=True,
             # a fleet (spec `segments:`) trains one model per segment across its shards
             merge_shards=fleet.merge_metrics, judge=fleet.verdict,
             settle=promotion.settle),
    StageDef("score", "the model's predictions for the population, in bounded batches",
             ScoreParams, inputs={"features": "features", "model": "model"},
             outputs=("predictions",), shardable=True,
             summary=("model_version", "rows_scored", "drift_alerts"),
             # the shards' drift histograms summed: the population's drift
             merge_shards=psi.merge_score_metrics,
             # DuckDB too: a `population: {where: ...}` predicate runs in it
             extras=("model", "features")),
)

STAGES: dict[str, StageDef] = {d.name: d for d in _DEFS}

# System packages an image needs for an extra (the OpenMP runtime of LightGBM).
EXTRA_SYSTEM_PACKAGES: dict[str, tuple[str, ...]] = {"model": ("libgomp1",)}


def get_stage(name: str, where: str = "stage") -> StageDef:
    """The named stage's definition; a SpecError listing the known ones otherwise."""
    try:
        return STAGES[name]
    except KeyError:
        raise SpecError(f"{where}: unknown stage {name!r}; known stages: "
                        f"{', '.join(STAGES)}") from None


def producers() -> dict[str, str]:
    """Dataset name -> the stage that writes it."""
    return {out: d.name for d in STAGES.values() for out in d.outputs}
