"""The run report's content: one model that `batchline report --json` prints and
`report.html` draws, so the two can never disagree.

Built from what a run left in storage, never from raw rows: the manifest (stages,
timings), and the `_SUCCESS.json` metrics of each committed output: ingest's
data-quality `checks`, train's headline figures with `calibration_valid` and
`roc_valid`, score's `drift` (or a fleet's `drift_segments`), a monitor stage's
`monitor`, and a fleet's leaderboard. Each section is found by the metrics key it
needs, whatever stage wrote it, so an optional stage (monitor) needs no special
case here. Pure Python over JSON (storage reads only): the launcher image has no
numpy. A section whose file cannot be read is left out and named in `problems`;
the report of a failed run is still a report.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from batchline import fleet, layout, storage
from batchline.errors import BatchlineError
from batchline.manifest import RunManifest
from batchline.params import DriftSpec

SCHEMA = "batchline.report/1"
REPORT_FILE = "report.html"
# A model's headline figure, the first its objective has, and whether higher is better.
HEADLINES = (("auc_valid", True), ("r2_valid", True), ("accuracy_valid", True),
             ("rmse_valid", False), ("multi_logloss_valid", False))
ACCURACY_LINES = 10  # degraded groups named among the first things shown; the tables have all
FLEET_LINES = 5  # a fleet's drift lines among the first things shown; the Drift table has all
SHOWN_TRAIN_METRICS = ("auc_valid", "logloss_valid", "calibration_ece", "prevalence_valid",
                       "rmse_valid", "mae_valid", "r2_valid", "multi_logloss_valid",
                       "accuracy_valid", "best_iteration", "rows_fit", "rows_early_stopping",
                       "rows_valid", "model_version", "segments_trained", "segments_failed",
                       "segments_fallback", "segments_promoted")


class StageRow(BaseModel):
    """One stage of the run: how it ended, when and how long it ran."""

    name: str
    state: str
    cause: str | None = None
    attempts: int = 0
    rows: int | None = None
    start_seconds: float | None = Field(None, description="seconds after the run was created")
    seconds: float | None = Field(None, description="wall time of the stage")
    reason: str = ""


class Check(BaseModel):
    """One data-quality check as ingest committed it."""

    check: str
    column: str | None = None
    on_fail: str = ""
    status: str = Field(description="pass, warn, fail or skipped")
    expected: Any = None
    observed: Any = None
    message: str = ""


class Quality(BaseModel):
    """The data-quality checks of the run's ingested data."""

    source: str = Field(description="the committed dataset the checks came with")
    checks: list[Check] | None = Field(description="None: no checks declared")


class FeatureDrift(BaseModel):
    """One feature (or the predictions) of a single model: PSI, band and the bins' counts."""

    name: str
    psi: float
    noise: float = 0.0
    band: str
    bins: list[str] = Field(default_factory=list, description="bin labels")
    expected: list[int] = Field(default_factory=list)
    actual: list[int] = Field(default_factory=list)


class FleetFeatureDrift(BaseModel):
    """One feature across a fleet's models."""

    name: str
    segments_drifted: int
    max_psi: float
    worst_segment: str


class Drift(BaseModel):
    """The scored population against the training rows, worst first."""

    warn: float
    alert: float
    drifted: list[str] = Field(description="drifted features (or prediction), worst first")
    features: list[FeatureDrift] = Field(description="every feature, worst PSI first")
    by_fleet: list[FleetFeatureDrift] = Field(default_factory=list,
                                              description="a fleet: per feature, its segments")


class CalibrationBin(BaseModel):
    """Validation rows of one equal-count bin: mean predicted and observed rate."""

    n: int
    predicted: float
    observed: float


class Roc(BaseModel):
    """The ROC curve of the validation rows (train's `roc_valid`)."""

    fpr: list[float]
    tpr: list[float]


class Training(BaseModel):
    """The model: headline metrics, calibration and ROC (a fleet: its global model)."""

    objective: str | None
    fleet: bool = Field(False, description="the global model of a fleet")
    headline: str | None = Field(description="the objective's headline metric")
    metrics: dict[str, Any] = Field(description="headline figures of the model")
    calibration: list[CalibrationBin] = Field(default_factory=list)
    roc: Roc | None = None


class AccuracyPoint(BaseModel):
    """The model's metric on matured labels for one month, run or segment."""

    label: str = Field(description="a month (YYYY-MM), a run id or a segment")
    labelled: int | None = None
    value: float | None = None
    training: float | None = None
    degraded: bool = False


class Accuracy(BaseModel):
    """Accuracy over time, from a monitor stage's `monitor` metrics."""

    metric: str
    tolerance: float
    by_month: list[AccuracyPoint] = Field(default_factory=list)
    by_run: list[AccuracyPoint] = Field(default_factory=list)
    by_segment: list[AccuracyPoint] = Field(default_factory=list,
                                            description="degraded first, then worst first")
    by_model: list[AccuracyPoint] = Field(default_factory=list,
                                          description="each model (segment/version) on the "
                                          "outcomes of its rows; degraded first")
    degraded: list[str] = Field(default_factory=list)


class SegmentRow(BaseModel):
    """One model of a fleet, as the segments table shows it."""

    segment: str
    status: str = Field(description="ok, failed or fallback")
    rows: int | None = None
    metric: float | None = None
    gate: str = Field("", description="promoted, refused, or empty")
    gate_reason: str = ""
    drift_alerts: int = Field(0, description="features (or prediction) drifted in this "
                              "segment's scored rows")
    max_psi: float | None = None
    degraded: bool | None = Field(None, description="from the monitor's by_segment; None "
                                  "without a monitor")
    psi: list[float] = Field(default_factory=list, description="PSI per feature, in "
                             "Fleet.features order: the row's sparkline")
    cause: str = ""


class Fleet(BaseModel):
    """Every model of a fleet run, worst first."""

    metric: str | None
    higher_is_better: bool = True
    features: list[str] = Field(description="the sparkline's bars, left to right")
    warn: float = 0.1
    counts: dict[str, int]
    segments: list[SegmentRow] = Field(description="worst first")


class RunContent(BaseModel):
    """Everything the run report shows."""

    schema_: Literal["batchline.report/1"] = Field("batchline.report/1", alias="schema")
    run_id: str
    pipeline: str
    state: str
    backend: str
    storage_root: str
    created_at: float
    ended_at: float | None
    seconds: float
    report: str = Field(description="URI of report.html")
    attention: list[str] = Field(description="what a person should look at first: failed "
                                 "stages and checks, degraded accuracy, drift")
    stages: list[StageRow]
    quality: Quality | None
    training: Training | None
    drift: Drift | None
    accuracy: Accuracy | None
    fleet: Fleet | None
    problems: list[str] = Field(description="sections that could not be read, and why")

    model_config = {"populate_by_name": True}


def report_uri(root: str, run_id: str) -> str:
    """Where a run's report lives: `runs/<id>/report.html` beside its manifest."""
    return storage.join(layout.run_uri(root, run_id), REPORT_FILE)


def build(manifest: RunManifest) -> RunContent:
    """The report's content from a run's manifest and its committed outputs."""
    outputs = _Outputs(manifest)
    training = _training(outputs)
    drift = _drift(outputs)
    accuracy = _accuracy(outputs)
    fleet_ = _fleet(outputs, manifest, accuracy)
    quality = _quality(outputs)
    end = manifest.ended_at or time.time()
    content = RunContent(
        run_id=manifest.run_id, pipeline=manifest.pipeline, state=manifest.shown_state(),
        backend=manifest.backend, storage_root=manifest.root, created_at=manifest.created_at,
        ended_at=manifest.ended_at, seconds=round(end - manifest.created_at, 3),
        report=report_uri(manifest.root, manifest.run_id), attention=[],
        stages=_stages(manifest), quality=quality, training=training, drift=drift,
        accuracy=accuracy, fleet=fleet_, problems=outputs.problems)
    content.attention = _attention(manifest, content)
    return content


def to_json(content: RunContent) -> str:
    """The content as `batchline report --json` prints it."""
    return content.model_dump_json(by_alias=True, indent=2)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the content (docs/report.schema.json is generated from it)."""
    return RunContent.model_json_schema(by_alias=True)


# -- reading what the run committed --------------------------------------------------------
class _Outputs:
    """The committed outputs of a run's done stages, each `_SUCCESS.json` read once."""

    def __init__(self, manifest: RunManifest) -> None:
        self.problems: list[str] = []
        # A fleet's drift bands: score's params as the run's spec has them, else defaults.
        drift = ((manifest.spec.get("stages", {}).get("score") or {}).get("params") or {}) \
            .get("drift") or {}
        self.limits = (float(drift.get("warn", DriftSpec().warn)),
                       float(drift.get("alert", DriftSpec().alert)))
        self.records: list[tuple[str, str, str, storage.SuccessRecord]] = []
        for stage, entry in manifest.stages.items():
            if not entry.state.done:
                continue
            for name, uri in entry.outputs.items():
                try:
                    self.records.append((stage, name, uri, storage.committed(uri)))
                except BatchlineError as exc:
                    self.problems.append(f"{stage}.{name}: {exc}")
        self.model = _model(self)

    def with_key(self, key: str) -> Iterator[tuple[str, str, str, storage.SuccessRecord]]:
        """Outputs whose metrics hold `key`, in the pipeline's order."""
        return ((s, n, u, r) for s, n, u, r in self.records if key in r.metrics)

    def first(self, key: str) -> tuple[str, str, str, storage.SuccessRecord] | None:
        return next(self.with_key(key), None)

    def json_file(self, uri: str, record: storage.SuccessRecord, name: str) -> Any:
        """A JSON file of a committed dataset (model.json), or None if it has none."""
        found = [f for f in record.files if f.path.rsplit("/", 1)[-1] == name]
        if not found:
            return None
        try:
            return json.loads(storage.read_bytes(storage.join(uri, found[0].path)))
        except (BatchlineError, ValueError) as exc:
            self.problems.append(f"{uri}/{name}: {exc}")
            return None


def _stages(manifest: RunManifest) -> list[StageRow]:
    rows = []
    for name, entry in manifest.stages.items():
        start = entry.started_at
        seconds = (entry.ended_at or time.time()) - start if start else None
        rows.append(StageRow(
            name=name, state=str(entry.state), cause=str(entry.cause) if entry.cause else None,
            attempts=len({a.number for a in entry.attempts}), rows=entry.rows,
            start_seconds=round(start - manifest.created_at, 3) if start else None,
            seconds=round(seconds, 3) if seconds is not None else None,
            reason=entry.reason))
    return rows


def _quality(outputs: _Outputs) -> Quality | None:
    found = outputs.first("checks")
    if found is None:
        # An ingest that committed declares no checks; no ingest at all says nothing.
        ingest = next(((s, n) for s, n, _, _ in outputs.records if s == "ingest"), None)
        return Quality(source=".".join(ingest), checks=None) if ingest else None
    stage, name, _, record = found
    checks = [Check.model_validate(c) for c in record.metrics["checks"] or []
              if isinstance(c, Mapping)]
    order = {"fail": 0, "warn": 1, "skipped": 2, "pass": 3}
    checks.sort(key=lambda c: order.get(c.status, 0))
    return Quality(source=f"{stage}.{name}", checks=checks or None)


def headline(metrics: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The first headline metric `metrics` has, and whether higher is better."""
    return next(((k, up) for k, up in HEADLINES if k in metrics), (None, True))


def _model(outputs: _Outputs) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The model's committed metrics and its card (model.json; a fleet's is the global
    model's), the card's metrics under the commit's: a fleet commits only headline
    figures, its global model's card has the calibration and ROC."""
    found = next((f for f in outputs.records if any(k in f[3].metrics for k, _ in HEADLINES)),
                 None)
    if found is None:
        return None
    card = outputs.json_file(found[2], found[3], "model.json") or {}
    return {**(card.get("metrics") or {}), **found[3].metrics}, card


def _training(outputs: _Outputs) -> Training | None:
    model = outputs.model
    if model is None:
        return None
    metrics = model[0]
    name, _ = headline(metrics)
    calibration = metrics.get("calibration_valid") or {}
    roc = metrics.get("roc_valid") or {}
    return Training(
        objective=metrics.get("objective"), headline=name,
        fleet="segments_trained" in metrics,
        metrics={k: metrics[k] for k in SHOWN_TRAIN_METRICS if k in metrics},
        calibration=[CalibrationBin.model_validate(b) for b in calibration.get("bins", [])],
        roc=Roc(fpr=roc["fpr"], tpr=roc["tpr"]) if roc.get("fpr") else None)


def _bin_labels(entry: Mapping[str, Any], vocabulary: list[str] | None) -> list[str]:
    """Readable bins: value ranges of a number, the categories of a text column."""
    if "edges" in entry:
        edges = [f"{e:g}" for e in entry["edges"]]
        if not edges:
            return ["all", "missing"]
        inner = [f"{a}-{b}" for a, b in itertools.pairwise(edges)]
        return [f"<{edges[0]}", *inner, f">={edges[-1]}", "missing"]
    codes = int(entry.get("codes") or 0)
    names = vocabulary if vocabulary and len(vocabulary) == codes else \
        [f"code {i}" for i in range(codes)]
    return [*names, "missing/unseen"]


def _drift(outputs: _Outputs) -> Drift | None:
    found = outputs.first("drift")
    if found is not None:
        result = found[3].metrics["drift"]
        vocab = _vocabularies(outputs)
        features = [FeatureDrift(name=name, psi=r["psi"], noise=r.get("noise", 0.0),
                                 band=r["band"], bins=_bin_labels(r, vocab.get(name)),
                                 expected=r.get("expected", []), actual=r.get("actual", []))
                    for name, r in result["psi"].items()]
        features.sort(key=lambda f: (-f.psi, f.name))
        limits = result["thresholds"]
        return Drift(warn=limits["warn"], alert=limits["alert"], drifted=result["drifted"],
                     features=features)
    found = outputs.first("drift_segments")
    if found is None:
        return None
    return _fleet_drift(found[3].metrics["drift_segments"], outputs.limits)


def _fleet_drift(by_model: Mapping[str, Any], limits: tuple[float, float]) -> Drift:
    per_feature: dict[str, list[tuple[float, str]]] = {}
    drifted_in: dict[str, int] = {}
    for key, model in by_model.items():
        for name, value in model.get("psi", {}).items():
            per_feature.setdefault(name, []).append((value, key))
        for name in model.get("drifted", []):
            drifted_in[name] = drifted_in.get(name, 0) + 1
    rows = [FleetFeatureDrift(name=name, segments_drifted=drifted_in.get(name, 0),
                              max_psi=max(values)[0], worst_segment=max(values)[1])
            for name, values in per_feature.items()]
    rows.sort(key=lambda r: (-r.segments_drifted, -r.max_psi, r.name))
    return Drift(warn=limits[0], alert=limits[1],
                 drifted=[r.name for r in rows if r.segments_drifted], features=[],
                 by_fleet=rows)


def _vocabularies(outputs: _Outputs) -> dict[str, list[str]]:
    """Category names for the drift bins, from the model card (model.json)."""
    card = outputs.model[1] if outputs.model else {}
    categorical = (card.get("feature_map") or {}).get("categorical") or {}
    return {k: [str(v) for v in values] for k, values in categorical.items()}


def _points(rows: list[Mapping[str, Any]], label: str, metric: str) -> list[AccuracyPoint]:
    return [AccuracyPoint(label=str(r.get(label, "")), labelled=r.get("labelled"),
                          value=r.get(metric), training=r.get("training"),
                          degraded=bool(r.get("degraded"))) for r in rows]


def _accuracy(outputs: _Outputs) -> Accuracy | None:
    found = outputs.first("monitor")
    if found is None:
        return None
    monitor = found[3].metrics["monitor"]
    metric = str(monitor.get("metric", "auc"))
    # the monitor lists them worst first; a stable sort keeps that under "degraded first"
    by_segment = _points(monitor.get("by_segment", []), "segment", metric)
    by_segment.sort(key=lambda p: not p.degraded)
    by_model = _points(monitor.get("by_model", []), "model", metric)
    by_model.sort(key=lambda p: not p.degraded)
    return Accuracy(metric=metric, tolerance=float(monitor.get("tolerance", 0.0)),
                    by_month=sorted(_points(monitor.get("by_month", []), "month", metric),
                                    key=lambda p: p.label),
                    by_run=_points(monitor.get("by_run", []), "run_id", metric),
                    by_segment=by_segment, by_model=by_model,
                    degraded=list(monitor.get("degraded", [])))


def _fleet(outputs: _Outputs, manifest: RunManifest, accuracy: Accuracy | None) -> Fleet | None:
    found = next(((s, n, u, r) for s, n, u, r in outputs.with_key("segments_trained")), None)
    if found is None:
        return None
    try:
        board = fleet.read_leaderboard(found[2])
    except BatchlineError as exc:
        outputs.problems.append(f"leaderboard: {exc}")
        return None
    drift_found = outputs.first("drift_segments")
    by_model = drift_found[3].metrics["drift_segments"] if drift_found else {}
    features = sorted({n for m in by_model.values() for n in m.get("psi", {})},
                      key=lambda n: (n == "prediction", n))
    degraded = {p.label: p.degraded for p in accuracy.by_segment} if accuracy else {}
    metric, higher = headline({k: 0 for r in board for k in r})
    rows = [_segment_row(r, metric, by_model.get(r["segment"]), features,
                         degraded.get(r["segment"]) if accuracy else None) for r in board]
    rows.sort(key=lambda r: _severity(r, higher))
    counts = {k: int(found[3].metrics.get(k, 0)) for k in
              ("segments_trained", "segments_failed", "segments_fallback", "segments_promoted")}
    return Fleet(metric=metric, higher_is_better=higher, features=features,
                 warn=outputs.limits[0], counts=counts, segments=rows)


def _segment_row(row: Mapping[str, Any], metric: str | None, drift: Mapping[str, Any] | None,
                 features: list[str], degraded: bool | None) -> SegmentRow:
    decision = row.get("decision") or {}
    gate = "" if not decision else "promoted" if decision.get("promote") else "refused"
    psi = drift.get("psi", {}) if drift else {}
    return SegmentRow(
        segment=str(row["segment"]), status=str(row.get("status", "")), rows=row.get("rows"),
        metric=row.get(metric) if metric else None, gate=gate,
        gate_reason=str(decision.get("reason", "")),
        drift_alerts=len(drift.get("drifted", [])) if drift else 0,
        max_psi=max(psi.values()) if psi else None,
        degraded=degraded, psi=[round(float(psi.get(n, 0.0)), 4) for n in features],
        cause=str(row.get("cause", "")))


def _severity(row: SegmentRow, higher_is_better: bool) -> tuple[Any, ...]:
    """Worst first: failed, degraded, drifted, refused by the gate; then the weakest metric."""
    rank = 0 if row.status == fleet.FAILED else 1 if row.degraded else \
        2 if row.drift_alerts else 3 if row.gate == "refused" else \
        5 if row.status == fleet.FALLBACK else 4
    metric = row.metric if row.metric is not None else float("inf")
    return (rank, metric if higher_is_better else -metric, row.segment)


def _attention(manifest: RunManifest, content: RunContent) -> list[str]:
    """The lines a person reads first: what failed, degraded or drifted."""
    lines = [f"stage {s.name} {s.state}" + (f" ({s.cause})" if s.cause else "") +
             (f": {s.reason}" if s.reason else "") for s in content.stages
             if s.state in ("failed", "cancelled")]
    if content.accuracy is not None:
        degraded = content.accuracy.degraded
        lines += [f"accuracy: {d}" for d in degraded[:ACCURACY_LINES]]
        if len(degraded) > ACCURACY_LINES:
            lines.append(f"accuracy: {len(degraded) - ACCURACY_LINES} more degraded models, "
                         "months, segments or runs (see Accuracy over time)")
    if content.quality is not None and content.quality.checks:
        lines += [f"data quality: {c.check}" + (f" on {c.column}" if c.column else "") +
                  f" {c.status}" + (f": {c.message}" if c.message else "")
                  for c in content.quality.checks if c.status in ("fail", "warn")]
    if content.fleet is not None:
        failed = [s.segment for s in content.fleet.segments if s.status == fleet.FAILED]
        if failed:
            lines.append(f"{len(failed)} segment models failed: {', '.join(failed[:10])}")
    if content.drift is not None and content.drift.drifted:
        if content.drift.by_fleet:
            shifted = [r for r in content.drift.by_fleet if r.segments_drifted]
            lines += [f"drift: {r.name} shifted in {r.segments_drifted} segments (worst "
                      f"{r.worst_segment}, PSI {r.max_psi:.3f})" for r in shifted[:FLEET_LINES]]
            if len(shifted) > FLEET_LINES:
                lines.append(f"drift: {len(shifted) - FLEET_LINES} more features shifted in "
                             "some segments (see Drift)")
        else:
            psi = {f.name: f for f in content.drift.features}
            lines += [f"drift: {n} PSI {psi[n].psi:.3f}, a {psi[n].band} shift"
                      for n in content.drift.drifted if n in psi]
    if manifest.reason and not lines:
        lines.append(f"run: {manifest.reason}")
    return lines
