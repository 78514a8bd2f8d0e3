"""The run report as one self-contained HTML file: `runs/<id>/report.html`.

Drawn from `run_report.RunContent` only (the same document `--json` prints, also
embedded in the page as JSON), with inline CSS, inline SVG plots
(report_plots.py) and a few lines of inline script that sort the fleet table.
Nothing is fetched: no CDN, no font, no image, no link. Every text from the run
goes through `_esc`, which also breaks up `://`, so no URL appears in the file
at all and a viewer has nothing to follow, whether it is opened from file://
or downloaded from an S3 console.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from batchline import report_plots as plots
from batchline import run_report, storage
from batchline.manifest import RunManifest
from batchline.run_report import (
    ACCURACY_LINES,
    Accuracy,
    Drift,
    Fleet,
    Quality,
    RunContent,
    StageRow,
    Training,
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#222;
margin:0 auto;max-width:1180px;padding:18px 24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid
#ddd;padding-bottom:3px}h3{font-size:14px;margin:14px 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 9px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f5f7f9;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555}.meta span{margin-right:16px}.muted{color:#777}
.state{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px}
.succeeded,.pass,.ok,.promoted{color:#2e8b57}.failed,.fail,.major,.bad{color:#c0392b}
.warn,.moderate,.refused{color:#b9770e}.state.succeeded{background:#2e8b57;color:#fff}
.state.failed,.state.stale{background:#c0392b;color:#fff}.state.running{background:#d4a017}
.state.cancelled{background:#8e44ad}
ul.attention{background:#fff4f2;border-left:4px solid #c0392b;padding:8px 8px 8px 28px}
.plots{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.legend{font-size:12px;color:#555;max-width:900px}
#segments th{cursor:pointer;user-select:none;white-space:nowrap}
#segments th[aria-sort=ascending]::after{content:" \\25B2"}
#segments th[aria-sort=descending]::after{content:" \\25BC"}
#segments td{padding:1px 8px;font-size:13px}
"""

# Sorts the fleet table by the clicked column (numbers as numbers; each cell's
# data-v holds its sort key), and marks the page ready for the report's tests.
SCRIPT = """
(function () {
  var table = document.getElementById("segments");
  function sortBy(index, th) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    rows.sort(function (x, y) {
      var a = x.cells[index].getAttribute("data-v"), b = y.cells[index].getAttribute("data-v");
      var na = parseFloat(a), nb = parseFloat(b);
      var order = (isNaN(na) || isNaN(nb)) ? a.localeCompare(b) : na - nb;
      return ascending ? order : -order;
    });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  }
  if (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener("click", function () { sortBy(index, th); });
    });
  }
  document.body.setAttribute("data-ready", "1");
})();
"""


def _esc(value: Any) -> str:
    """Text from the run, escaped; `://` broken up so the file holds no URL."""
    return html.escape(str(value)).replace("://", ":&#47;&#47;")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _esc(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = (),
           attrs: str = "") -> str:
    cells = "".join(f'<th{" class=n" if i in numeric else ""}>{_esc(h)}</th>'
                    for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render(content: RunContent) -> str:
    """The whole page."""
    sections = [_header(content), _attention(content.attention), _accuracy(content.accuracy),
                _stages(content.stages, content.seconds), _quality(content.quality),
                _training(content.training), _drift(content.drift), _fleet(content.fleet),
                _footer(content)]
    # The JSON document inside the page, so a machine reading the file gets the same
    # content; "/" escaped keeps "</script>" and any URL out of it.
    data = content.model_dump_json(by_alias=True).replace("/", "\\/")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>run {_esc(content.run_id)} ({_esc(content.state)})</title>"
            f"<style>{CSS}</style></head><body>" + "".join(sections) +
            f'<script type="application/json" id="report-data">{data}</script>'
            f"<script>{SCRIPT}</script></body></html>\n")


def _header(c: RunContent) -> str:
    return (f'<h1>run {_esc(c.run_id)} <span class="state {_esc(c.state)}">{_esc(c.state)}'
            f'</span></h1><div class="meta"><span>pipeline <b>{_esc(c.pipeline)}</b></span>'
            f"<span>backend {_esc(c.backend)}</span><span>started {_when(c.created_at)}</span>"
            f"<span>ended {_when(c.ended_at)}</span>"
            f"<span>duration {plots.duration(c.seconds)}</span></div>"
            f'<div class="meta muted">storage {_esc(c.storage_root)}</div>')


def _attention(lines: list[str]) -> str:
    if not lines:
        return '<p class="ok" id="attention">Nothing needs attention: no failed stage or ' \
               "check, no degraded accuracy, no drift.</p>"
    items = "".join(f"<li>{_esc(line)}</li>" for line in lines)
    return f'<h2>Needs attention</h2><ul class="attention" id="attention">{items}</ul>'


def _stages(stages: list[StageRow], total: float) -> str:
    chart = plots.gantt([(s.name, s.state, s.start_seconds, s.seconds) for s in stages], total)
    rows = [(_esc(s.name), f'<span class="{_esc(s.state)}">{_esc(s.state)}</span>'
             + (f" ({_esc(s.cause)})" if s.cause else ""), str(s.attempts), _num(s.rows),
             plots.duration(s.seconds) if s.seconds is not None else "-",
             _esc(s.reason)) for s in stages]
    return ('<h2 id="stages">Stages</h2>' + chart +
            _table(("stage", "state", "attempts", "rows", "time", "why"), rows, (2, 3, 4)))


def _quality(quality: Quality | None) -> str:
    head = '<h2 id="quality">Data quality</h2>'
    if quality is None:
        return head + '<p class="muted">ingest did not commit: nothing was checked.</p>'
    if not quality.checks:
        return head + (f'<p class="muted">no checks declared ({_esc(quality.source)} commits '
                       "without data-quality checks).</p>")
    rows = [(f'<span class="{_esc(c.status)}">{_esc(c.status)}</span>', _esc(c.check),
             _esc(c.column or ""), _esc(c.on_fail), _esc(_compact(c.expected)),
             _esc(_compact(c.observed)), _esc(c.message)) for c in quality.checks]
    counts = {s: sum(c.status == s for c in quality.checks)
              for s in ("fail", "warn", "pass", "skipped")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return head + f"<p>{_esc(summary)} (from {_esc(quality.source)})</p>" + _table(
        ("status", "check", "column", "on fail", "expected", "observed", "message"), rows)


def _compact(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)[:120]


def _training(training: Training | None) -> str:
    if training is None:
        return '<h2 id="training">Model</h2><p class="muted">train did not commit in this ' \
               "run.</p>"
    head = '<h2 id="training">Model' + (" (the fleet's global model)" if training.fleet
                                        else "") + "</h2>"
    rows = [(_esc(k), _num(v)) for k, v in training.metrics.items()]
    parts = [_table(("metric", "value"), rows, (1,))]
    if training.calibration:
        parts.append("<div><h3>Calibration (validation rows)</h3>" + plots.calibration(
            [(b.predicted, b.observed) for b in training.calibration]) + "</div>")
    if training.roc is not None:
        auc = training.metrics.get("auc_valid")
        parts.append("<div><h3>ROC (validation rows)</h3>" +
                     plots.roc(training.roc.fpr, training.roc.tpr,
                               auc if isinstance(auc, int | float) else None) + "</div>")
    elif training.objective == "binary":
        parts.append('<p class="muted">no ROC points recorded (a model trained by an older '
                     "batchline).</p>")
    return head + f'<div class="plots">{"".join(parts)}</div>'


def _drift(drift: Drift | None) -> str:
    head = '<h2 id="drift">Drift</h2>'
    if drift is None:
        return head + '<p class="muted">score did not commit a drift check in this run.</p>'
    legend = (f'<p class="legend">Population stability index of the scored rows against '
              f"the model's training rows, per feature and for the predictions: below "
              f"{drift.warn:g} stable, up to {drift.alert:g} a moderate shift, above a major "
              "one, judged on the PSI above what chance alone gives (noise).</p>")
    if drift.by_fleet:
        rows = [(_esc(r.name), _num(r.segments_drifted), _num(r.max_psi, 3),
                 _esc(r.worst_segment)) for r in drift.by_fleet]
        return head + legend + _table(("feature", "segments drifted", "max PSI",
                                       "worst segment"), rows, (1, 2))
    rows = [(_esc(f.name), _num(f.psi, 3), _num(f.noise, 3),
             f'<span class="{_esc(f.band)}">{_esc(f.band)}</span>') for f in drift.features]
    shown = [f for f in drift.features if f.name in drift.drifted and f.expected]
    charts = "".join(f"<div><h3>{_esc(f.name)} (PSI {f.psi:.3f})</h3>"
                     + plots.histograms(f.bins, f.expected, f.actual, f.name) + "</div>"
                     for f in shown)
    table = _table(("feature", "PSI", "noise", "band"), rows, (1, 2))
    return head + legend + f'<div class="plots">{table}{charts}</div>'


def _accuracy(accuracy: Accuracy | None) -> str:
    if accuracy is None:
        return ""
    head = f'<h2 id="accuracy">Accuracy over time ({_esc(accuracy.metric)})</h2>'
    parts = []
    if accuracy.degraded:  # the worst named here; every group is in the tables below
        shown = accuracy.degraded[:ACCURACY_LINES]
        more = len(accuracy.degraded) - len(shown)
        parts.append('<ul class="attention">' + "".join(
            f"<li>{_esc(d)}</li>" for d in shown) +
            (f"<li>and {more} more, in the tables below</li>" if more else "") + "</ul>")
    months = accuracy.by_month
    if months:
        training = next((p.training for p in reversed(months) if p.training is not None), None)
        parts.append(plots.accuracy_line([p.label for p in months], [p.value for p in months],
                                         training, accuracy.tolerance,
                                         [p.degraded for p in months], accuracy.metric))
    for title, points in (("by model (degraded first)", accuracy.by_model),
                          ("by segment (degraded first, then worst)", accuracy.by_segment),
                          ("by run", accuracy.by_run),
                          ("by month", sorted(months, key=lambda p: not p.degraded))):
        if points:
            rows = [(_esc(p.label), _num(p.labelled), _num(p.value), _num(p.training),
                     '<span class="bad">degraded</span>' if p.degraded else "ok")
                    for p in points]
            parts.append(f"<h3>{_esc(title)}</h3>" + _table(
                ("", "labelled", accuracy.metric, "at training", ""), rows, (1, 2, 3)))
    return head + "".join(parts)


def _fleet(fleet: Fleet | None) -> str:
    if fleet is None:
        return ""
    counts = ", ".join(f"{v} {k.removeprefix('segments_')}" for k, v in fleet.counts.items())
    weakest = "lowest" if fleet.higher_is_better else "highest"
    legend = (f'<p class="legend">Every segment, worst first: failed, then degraded accuracy, '
              f"then drifted, then refused by the promotion gate, then by "
              f"{_esc(fleet.metric or 'metric')} ({weakest} first). Click a column to sort; "
              f"# restores this order. The sparkline shows "
              f"the PSI of each feature in the segment's scored rows against its own model's "
              f"training rows, one bar per feature in this order: "
              f"{_esc(', '.join(fleet.features))}"
              f"; red bars are at or above {fleet.warn:g}.</p>")
    rows = []
    for i, s in enumerate(fleet.segments, 1):
        degraded = "" if s.degraded is None else "yes" if s.degraded else "no"
        cells = [(i, str(i)), (s.segment, _esc(s.segment)),
                 (s.status, f'<span class="{_esc(s.status)}">{_esc(s.status)}</span>'),
                 (s.rows if s.rows is not None else -1, _num(s.rows)),
                 (s.metric if s.metric is not None else "", _num(s.metric)),
                 (s.gate, f'<span class="{_esc(s.gate)}" title="{_esc(s.gate_reason)}">'
                          f"{_esc(s.gate)}</span>"),
                 (s.drift_alerts, str(s.drift_alerts)),
                 (s.max_psi if s.max_psi is not None else -1, _num(s.max_psi, 3)),
                 (degraded, degraded),
                 (s.max_psi if s.max_psi is not None else -1,
                  plots.sparkline(s.psi, fleet.warn) if s.psi else ""),
                 (s.cause, _esc(s.cause[:80]))]
        rows.append("<tr>" + "".join(f'<td data-v="{_esc(v)}">{text}</td>'
                                     for v, text in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#", "segment", "status", "rows",
                                             _esc(fleet.metric or "metric"), "gate",
                                             "drift alerts", "max PSI", "degraded",
                                             "PSI by feature", "cause"))
    return (f'<h2 id="fleet">Fleet: {len(fleet.segments)} models</h2><p>{_esc(counts)}</p>'
            + legend + f'<table id="segments"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _footer(c: RunContent) -> str:
    problems = "".join(f"<li>{_esc(p)}</li>" for p in c.problems)
    return ((f'<h2>Not shown</h2><ul class="muted">{problems}</ul>' if problems else "") +
            f'<p class="muted">Written by batchline from the run\'s manifest and committed '
            f"metrics (no raw rows). The same content as <code>batchline report "
            f"{_esc(c.run_id)} --json</code> is embedded in this file "
            '(<code>script#report-data</code>).</p>')


def write(manifest: RunManifest, out: str | None = None) -> tuple[str, RunContent]:
    """Build and write a run's report (`runs/<id>/report.html`, or `out`) through storage,
    so an S3 root gets it beside the manifest; returns its URI and content."""
    content = run_report.build(manifest)
    uri = out or content.report
    storage.write_text(uri, render(content))
    return uri, content
