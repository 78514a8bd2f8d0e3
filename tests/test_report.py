"""The run report: its content from what a run committed, the HTML drawn from it, and
the page as a person sees it in headless Chromium (screenshot, DOM, console, network).

Sections whose producing stage lands later (data-quality checks, the monitor) are
tested with `_SUCCESS.json` files committed here through batchline.storage.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SPEC, run_cli

from batchline import fleet, report_html, run_report, storage
from batchline.client import Client
from batchline.manifest import RunManifest, RunState, StageState

ARTIFACTS = ROOT / "build" / "test-artifacts"
SCHEMA_DOC = ROOT / "docs" / "report.schema.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FEATURES = ["age", "hemoglobin", "sodium", "prediction"]

CHECKS = [
    {"check": "not_null", "column": "patient_id", "on_fail": "fail", "status": "pass",
     "expected": 0, "observed": 0, "message": ""},
    {"check": "range", "column": "age", "on_fail": "warn", "status": "warn",
     "expected": [0, 110], "observed": {"above": 12}, "message": "12 rows above 110"},
]
MONITOR = {
    "metric": "auc", "tolerance": 0.05,
    "by_run": [{"run_id": "r0", "model_version": "abc", "training": 0.73, "labelled": 5000,
                "auc": 0.71, "logloss": 0.4, "calibration_ece": 0.02, "degraded": False}],
    "by_month": [{"month": f"2025-{m:02d}", "labelled": 900, "auc": a, "logloss": 0.4,
                  "calibration_ece": 0.02, "training": 0.73, "degraded": a < 0.68}
                 for m, a in ((3, 0.72), (4, 0.71), (5, 0.73), (6, 0.70), (7, 0.61))],
    "by_segment": [{"segment": "H001", "labelled": 300, "auc": 0.70, "training": 0.74,
                    "degraded": False},
                   {"segment": "H002", "labelled": 280, "auc": 0.55, "training": 0.74,
                    "degraded": True}],
    "degraded": ["month 2025-07: auc 0.61 vs 0.73 at training (tolerance 0.05)",
                 "segment H002: auc 0.55 vs 0.74 at training (tolerance 0.05)"],
}


def _commit(root: str, run_id: str, stage: str, output: str, metrics: dict[str, Any],
            files: dict[str, bytes] | None = None) -> str:
    uri = storage.join(root, "runs", run_id, stage, output)
    with storage.DatasetWriter(uri, storage.Stamp(run_id, stage, "k")) as out:
        for name, data in (files or {}).items():
            out.write_file(name, data)
        out.commit(metrics)
    return uri


def _manifest(root: str, run_id: str, outputs: dict[str, dict[str, str]],
              failed: str | None = None) -> RunManifest:
    stages = [*outputs, *([failed] if failed else [])]
    manifest = RunManifest.new(root, run_id, "readmission", "local", {}, stages)
    for i, (stage, uris) in enumerate(outputs.items()):
        entry = manifest.stage(stage)
        entry.state, entry.outputs, entry.rows = StageState.SUCCEEDED, uris, 1000 * (i + 1)
        entry.started_at, entry.ended_at = manifest.created_at + i, manifest.created_at + i + 0.8
    if failed:
        manifest.stage(failed).state = StageState.FAILED
        manifest.stage(failed).reason = "bad input"
    manifest.set_state(RunState.FAILED if failed else RunState.SUCCEEDED)
    return manifest


def _drift_entry(psi: float, band: str) -> dict[str, Any]:
    return {"psi": psi, "noise": 0.001, "band": band, "edges": [1.0, 2.0],
            "expected": [50, 30, 20, 0], "actual": [20, 30, 50, 0]}


def _single_run(root: str) -> RunManifest:
    rid = "single"
    ingest = _commit(root, rid, "ingest", "encounters", {"checks": CHECKS})
    model = _commit(root, rid, "train", "model", {
        "objective": "binary", "auc_valid": 0.73, "calibration_ece": 0.01,
        "calibration_valid": {"ece": 0.01, "bins": [{"n": 10, "predicted": p, "observed": p}
                                                     for p in (0.1, 0.2, 0.4)]},
        "roc_valid": {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.6, 1.0],
                      "thresholds": [1.0, 0.5, 0.0]}})
    score = _commit(root, rid, "score", "predictions", {"drift": {
        "thresholds": {"warn": 0.1, "alert": 0.25, "min_rows": 100}, "drifted": ["age"],
        "psi": {"age": _drift_entry(0.4, "major"), "sodium": _drift_entry(0.01, "stable")}}})
    accuracy = _commit(root, rid, "monitor", "accuracy", {"monitor": MONITOR})
    return _manifest(root, rid, {"ingest": {"encounters": ingest}, "train": {"model": model},
                                 "score": {"predictions": score},
                                 "monitor": {"accuracy": accuracy}})


def _embedded(page: str) -> Any:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                      page, re.S)
    assert found, "the page embeds its content"
    return json.loads(found.group(1))


def test_every_section_is_drawn_from_what_the_run_committed(tmp_path: Path) -> None:
    content = run_report.build(_single_run(str(tmp_path)))
    # Degraded accuracy first, then the failed checks, then drift.
    assert content.attention[:2] == [f"accuracy: {d}" for d in MONITOR["degraded"]]
    assert content.attention[2].startswith("data quality: range on age warn")
    assert content.attention[3] == "drift: age PSI 0.400, a major shift"
    assert content.quality is not None and content.quality.checks is not None
    assert [c.status for c in content.quality.checks] == ["warn", "pass"]  # worst first
    assert content.accuracy is not None
    assert [p.label for p in content.accuracy.by_segment] == ["H002", "H001"]
    assert [p.degraded for p in content.accuracy.by_month][-1] is True
    assert content.drift is not None and content.drift.features[0].name == "age"
    assert content.drift.features[0].bins == ["<1", "1-2", ">=2", "missing"]
    assert content.training is not None and content.training.roc is not None
    page = report_html.render(content)
    for kind in ("gantt", "calibration", "roc", "histogram", "accuracy"):
        assert f"plot plot-{kind}" in page, kind
    # What a person must see first comes before the rest of the page.
    assert page.index('id="attention"') < page.index('id="accuracy"') < page.index(
        'id="stages"') < page.index('id="quality"')
    assert "12 rows above 110" in page
    assert _embedded(page) == json.loads(run_report.to_json(content))


def test_the_page_holds_no_url_whatever_the_run_says(tmp_path: Path) -> None:
    manifest = _single_run(str(tmp_path))
    manifest.stage("monitor").reason = "see https://example.org/x and </script><b>"
    page = report_html.render(run_report.build(manifest))
    assert "://" not in page and not re.search(r"\b(src|href|url)\s*[=(]", page)
    assert "</script><b>" not in page and "&lt;/script&gt;&lt;b&gt;" in page
    assert _embedded(page)["stages"][3]["reason"].startswith("see https://example.org/x")


def test_the_report_of_an_s3_root_is_written_beside_its_manifest(s3_bucket: str) -> None:
    root = f"{s3_bucket}/batchline"
    manifest = _single_run(root)
    uri = Client(root).report(manifest.run_id)
    assert uri == f"{root}/runs/single/report.html"
    page = storage.read_text(uri)
    assert page.startswith("<!DOCTYPE html>") and "plot plot-roc" in page
    assert _embedded(page)["storage_root"] == root
    assert Client(root).report_content("single").accuracy is not None


def test_a_run_without_checks_or_model_says_so(tmp_path: Path) -> None:
    root = str(tmp_path)
    ingest = _commit(root, "bare", "ingest", "encounters", {"rows_in": 10})
    manifest = _manifest(root, "bare", {"ingest": {"encounters": ingest}}, failed="features")
    content = run_report.build(manifest)
    assert content.quality is not None and content.quality.checks is None
    assert content.training is None and content.drift is None and content.fleet is None
    assert content.attention == ["stage features failed: bad input"]
    page = report_html.render(content)
    assert "no checks declared" in page and "train did not commit" in page


def _fleet_run(root: str, segments: int) -> RunManifest:
    rid = "fleet"
    board = [{"segment": fleet.GLOBAL, "status": fleet.OK, "rows": 10**6, "auc_valid": 0.74,
              "decision": {"promote": True, "reason": "first model"}}]
    for i in range(segments):
        board.append({"segment": f"H{i:03d}", "status": fleet.OK, "rows": 2000 + i,
                      "auc_valid": round(0.60 + 0.0003 * i, 4),
                      "decision": {"promote": i % 7 != 0, "reason": "beats the champion"}})
    board[5] = {"segment": "H004", "status": fleet.FAILED, "cause": "only one class"}
    model = _commit(root, rid, "train", "model", {
        "auc_valid": 0.74, "segments_trained": segments - 1, "segments_failed": 1},
        {fleet.LEADERBOARD: json.dumps(board).encode()})
    drifted = "H012"
    drift = {r["segment"]: {"rows": 300, "drifted": ["age"] if r["segment"] == drifted else [],
                            "psi": {n: 0.4 if r["segment"] == drifted and n == "age" else 0.02
                                    for n in FEATURES}, "noise": {}} for r in board}
    score = _commit(root, rid, "score", "predictions", {"drift_segments": drift,
                                                        "drift_alerts": 1})
    monitor = {**MONITOR, "by_segment": [{"segment": "H010", "auc": 0.5, "training": 0.7,
                                          "degraded": True}], "degraded": ["segment H010"]}
    accuracy = _commit(root, rid, "monitor", "accuracy", {"monitor": monitor})
    return _manifest(root, rid, {"train": {"model": model}, "score": {"predictions": score},
                                 "monitor": {"accuracy": accuracy}})


def test_a_fleet_lists_every_segment_worst_first(tmp_path: Path) -> None:
    content = run_report.build(_fleet_run(str(tmp_path), 20))
    assert content.fleet is not None
    order = [s.segment for s in content.fleet.segments]
    # failed, degraded (monitor), drifted, refused by the gate, then the weakest AUC
    assert order[:8] == ["H004", "H010", "H012", "H000", "H007", "H014", "H001", "H002"]
    assert len(order) == 21 and order[-1] == "_global"  # the best AUC, last
    assert content.attention[0] == "accuracy: segment H010"
    page = report_html.render(content)
    assert page.count('<svg class="spark"') == 21
    assert 'id="segments"' in page and "data-ready" in page  # the sort script


def test_a_fleet_of_500_stays_under_2_mb(tmp_path: Path) -> None:
    content = run_report.build(_fleet_run(str(tmp_path), 500))
    assert content.fleet is not None and len(content.fleet.segments) == 501
    page = report_html.render(content)
    assert len(page.encode()) < 2_000_000, len(page.encode())
    assert page.count("<tr>") >= 501


def test_the_schema_doc_is_current() -> None:
    """docs/report.schema.json is generated: BATCHLINE_UPDATE_SCHEMA=1 rewrites it."""
    import os

    schema = run_report.json_schema()
    if os.environ.get("BATCHLINE_UPDATE_SCHEMA"):
        SCHEMA_DOC.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    assert json.loads(SCHEMA_DOC.read_text()) == schema


def test_an_unknown_run_is_bad_input(tmp_path: Path) -> None:
    result = run_cli("report", "nope", "--storage", str(tmp_path))
    assert result.returncode == 2 and "no run 'nope'" in result.stderr


@pytest.mark.slow
def test_a_report_that_cannot_be_written_never_fails_the_run(tmp_path: Path,
                                                             demo_csv: Path) -> None:
    (tmp_path / "runs" / "blocked" / "report.html").mkdir(parents=True)  # a folder
    result = run_cli("run", str(SPEC), "--storage", str(tmp_path), "--run-id", "blocked",
                     "--set", f"stages.ingest.params.source={demo_csv}")
    assert result.returncode == 0, result.stderr
    assert "could not write its report" in result.stderr
    assert "\nreport " not in result.stdout  # the summary points to no report


# -- the page in a browser ----------------------------------------------------------------
# Chromium's own traffic (component updates, sync) starts from no origin; a request the
# page makes carries its document as initiator or its file:// isolation key.
BROWSER_ONLY = "not an origin"
LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome:", "blob:")
ACTUAL_BLUE = (0x2F, 0x6F, 0xB0)  # report_plots.ACTUAL: the plots' lines and bars


def _chromium(tmp: Path, page: Path, *action: str) -> tuple[str, str, Path]:
    """Open `page` once in headless Chromium; its stdout, stderr and net log."""
    net_log = tmp / f"netlog-{len(list(tmp.glob('netlog-*')))}.json"
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
         f"--log-net-log={net_log}", "--window-size=1280,2400", "--hide-scrollbars",
         *action, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr, net_log


def console_problems(stderr: str) -> list[str]:
    """Every console message and uncaught exception Chromium logged for the page (the
    report writes none, so any is a problem)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def page_requests(net_log: Path) -> list[str]:
    """URLs the page (not the browser itself) asked for outside file:, data: and the like."""
    log = json.loads(net_log.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    out = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        from_page = params.get("initiator") != BROWSER_ONLY or \
            "file://" in str(params.get("network_isolation_key", ""))
        if from_page and not params["url"].startswith(LOCAL_SCHEMES):
            out.append(params["url"])
    return out


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    step = 4 if color == 6 else 3
    raw, stride, rows, previous = zlib.decompress(idat), width * step, [], bytes(width * step)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) *
                                                          (stride + 1)])
        for i in range(stride):
            a = line[i - step] if i >= step else 0
            b = previous[i]
            c = previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 255
        previous = bytes(line)
        rows.append(previous if step == 3 else bytes(v for j, v in enumerate(previous)
                                                     if j % 4 != 3))
    return width, height, rows


def _colors(path: Path) -> tuple[float, int]:
    """Share of non-white pixels and the count of the plots' blue ones."""
    width, _, rows = png_pixels(path)
    inked = blue = 0
    for row in rows[::4]:  # every 4th row is plenty
        for x in range(0, width * 3, 3):
            r, g, b = row[x], row[x + 1], row[x + 2]
            inked += (r, g, b) != (255, 255, 255)
            blue += abs(r - ACTUAL_BLUE[0]) + abs(g - ACTUAL_BLUE[1]) + abs(b - ACTUAL_BLUE[2]) < 30
    return inked / (width * len(rows[::4])), blue


@pytest.fixture
def chromium() -> str:
    """The browser these tests look through; missing is a failure, not a skip."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` (or .ci/run) installs it, or "
                    "apt-get install chromium")
    return CHROMIUM


needs_chromium = pytest.mark.usefixtures("chromium")


@pytest.mark.slow
@needs_chromium
def test_the_detectors_catch_a_broken_page_and_a_network_request(tmp_path: Path) -> None:
    """The checks below can fail: a page with a script error and an http image trips both."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>broken</p><img src="http://127.0.0.1:9/x.png">'
                   '<script>console.error("deliberate"); notAFunction();</script></body></html>')
    _, stderr, net_log = _chromium(tmp_path, bad, "--dump-dom")
    problems = console_problems(stderr)
    assert any("deliberate" in p for p in problems)
    assert any("notAFunction is not defined" in p for p in problems)
    assert page_requests(net_log) == ["http://127.0.0.1:9/x.png"]


@pytest.mark.slow
@needs_chromium
def test_the_demo_report_in_chromium(tmp_path: Path, demo_csv: Path) -> None:
    root = tmp_path / "data"
    client = Client(str(root))
    manifest = client.run(str(SPEC), sets={"stages.ingest.params.source": str(demo_csv)},
                          run_id="browser")
    page = Path(run_report.report_uri(str(root), manifest.run_id))
    assert page.is_file(), "the launcher wrote the report at the end of the run"
    assert page.stat().st_size < 200_000
    assert "http" not in page.read_text().lower()  # no URL of any kind

    dom, stderr_dom, log_dom = _chromium(tmp_path, page, "--dump-dom")
    assert 'data-ready="1"' in dom, "the page's script ran"
    for kind in ("gantt", "calibration", "roc"):
        assert f"plot plot-{kind}" in dom, kind
    # the demo spec's data-quality checks: all pass; the row count has no earlier run yet
    assert re.search(r"<p>\d+ pass, 1 skipped \(from ingest\.encounters\)</p>", dom)
    assert 'id="drift"' in dom

    shot = tmp_path / "report.png"
    _, stderr_shot, log_shot = _chromium(tmp_path, page, f"--screenshot={shot}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-demo.png")
    width, height, _ = png_pixels(shot)
    assert (width, height) == (1280, 2400)
    inked, blue = _colors(shot)
    assert 0.02 < inked < 0.6, inked  # text and plots, not a blank or a solid page
    assert blue > 200, blue  # the plots' lines and bars were drawn

    assert console_problems(stderr_dom + stderr_shot) == []
    assert page_requests(log_dom) == [] and page_requests(log_shot) == []


@pytest.mark.slow
@needs_chromium
def test_clicking_a_fleet_column_sorts_the_table_in_chromium(tmp_path: Path) -> None:
    """The page's own script, driven by a click: rows sort by rows, then back by #."""
    content = run_report.build(_fleet_run(str(tmp_path / "store"), 30))
    probe = ("<script>var t = document.getElementById('segments'), h = t.tHead.rows[0].cells;"
             "function first() { return Array.prototype.map.call(t.tBodies[0].rows,"
             " function (r) { return r.cells[1].textContent; }).slice(0, 3).join(' '); }"
             "h[3].click(); var up = first(); h[3].click(); var down = first();"
             "h[0].click(); document.body.setAttribute('data-probe', up + '|' + down + '|' +"
             " first() + '|' + h[0].getAttribute('aria-sort'));</script>")
    page = tmp_path / "fleet.html"
    page.write_text(report_html.render(content).replace("</body>", probe + "</body>"))
    dom, stderr, _ = _chromium(tmp_path, page, "--dump-dom")
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    up, down, restored, state = found.group(1).split("|")
    # rows: H004 failed (none), then 2000 + i; the global model has 10**6
    assert up == "H004 H000 H001" and down == "_global H029 H028", found.group(1)
    assert restored == " ".join(s.segment for s in content.fleet.segments[:3])  # type: ignore
    assert state == "ascending" and console_problems(stderr) == []


@pytest.mark.slow
@needs_chromium
def test_every_section_in_chromium(tmp_path: Path) -> None:
    """Checks and the monitor (stages that land later) as a person sees them."""
    page = tmp_path / "sections.html"
    page.write_text(report_html.render(run_report.build(_single_run(str(tmp_path / "s")))))
    dom, stderr, net_log = _chromium(tmp_path, page, "--dump-dom")
    for kind in ("accuracy", "histogram", "calibration", "roc", "gantt"):
        assert f"plot plot-{kind}" in dom, kind
    shot = tmp_path / "sections.png"
    _, stderr_shot, _ = _chromium(tmp_path, page, f"--screenshot={shot}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-sections.png")
    assert _colors(shot)[1] > 200
    assert console_problems(stderr + stderr_shot) == [] and page_requests(net_log) == []
