"""The run report's pictures and size: the demo and a 500-hospital fleet.

    python bench/report_screenshots.py [--work build/report-bench] [--docs docs/report]

Generates the demo data (200,000 rows) and the fleet's (500 hospitals,
4,000,000 rows, as `make fleet-demo`), runs both pipelines locally (skipped
when the run is there already), and each once more with the monitor stage:
on data whose label model changes on 2024-01-01, a run on an early snapshot
and a second on the same encounters with every outcome matured (the report
shown is the second's); writes each run's report again, timing it,
screenshots it in headless Chromium (1280 px wide) into docs/, and prints a
Markdown section for bench/results.md: report sizes in bytes and render times.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "batchline.cli"]


def _cli(*args: str) -> str:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"batchline {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


# The monitor section a monitored case adds to the spec (as docs/monitoring.md shows it).
MONITOR = {"label": "readmitted_30d", "id_columns": ["encounter_id"],
           "time_column": "discharge_date", "segment_column": "hospital_id"}
# A monitored case's two snapshots of the same encounters: 18 months still to score, then
# every outcome matured; the label model changes six months into the scored period.
SNAPSHOTS = (("early", "548"), ("late", "0"))
LABEL_CHANGE = "2024-01-01"


def _run_once(store: Path, run_id: str, spec: Path, source: Path) -> None:
    if not (store / "runs" / run_id / "manifest.json").exists():
        _cli("run", str(spec), "--storage", str(store), "--run-id", run_id,
             "--set", f"stages.ingest.params.source={source}")


def _pipeline(work: Path, name: str, spec: str, data_args: list[str],
              monitored: bool) -> tuple[str, str]:
    """Run the pipeline (kept between invocations); the storage root and the run to show.

    A monitored case runs twice: on the early snapshot, then the whole pipeline again on
    the matured one, whose monitor judges the first run's predictions (the run shown)."""
    store, run_id = work / f"{name}-store", f"report-{name}"
    if not monitored:
        data = work / f"{name}-data"
        if not (data / "encounters.csv").exists():
            _cli("demo-data", *data_args, "--out", str(data))
        _run_once(store, run_id, ROOT / "jobs" / spec, data / "encounters.csv")
        return str(store), run_id
    import yaml

    document = yaml.safe_load((ROOT / "jobs" / spec).read_text(encoding="utf-8"))
    document["stages"]["monitor"] = {"params": MONITOR}
    monitored_spec = work / f"{name}.yaml"
    monitored_spec.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    for snapshot, days in SNAPSHOTS:
        data = work / f"{name}-{snapshot}"
        if not (data / "encounters.csv").exists():
            _cli("demo-data", *data_args, "--population-days", days, "--label-change",
                 LABEL_CHANGE, "--out", str(data))
        _run_once(store, f"{run_id}-{snapshot}", monitored_spec, data / "encounters.csv")
    return str(store), f"{run_id}-late"


def _render(store: str, run_id: str) -> tuple[Path, float]:
    from batchline import report_html
    from batchline.manifest import RunManifest

    started = time.perf_counter()
    uri, _ = report_html.write(RunManifest.load(store, run_id))
    return Path(uri), time.perf_counter() - started


def _cli_seconds(store: str, run_id: str) -> float:
    """`batchline report RUN` as a person types it: interpreter start and imports too."""
    started = time.perf_counter()
    _cli("report", run_id, "--storage", store)
    return time.perf_counter() - started


def _screenshot(page: Path, out: Path, height: int) -> None:
    chromium = shutil.which("chromium") or "chromium"
    with_profile = out.parent / ".chromium-profile"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--hide-scrollbars",
                    f"--user-data-dir={with_profile}", f"--window-size=1280,{height}",
                    f"--screenshot={out}", page.as_uri()],
                   capture_output=True, check=True, timeout=180)
    shutil.rmtree(with_profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "build" / "report-bench"))
    parser.add_argument("--docs", default=str(ROOT / "docs" / "report"))
    parser.add_argument("--fleet-rows", type=int, default=4_000_000)
    parser.add_argument("--monitored-fleet-rows", type=int, default=2_000_000)
    parser.add_argument("--only", nargs="*", help="the cases to make (default: all)")
    args = parser.parse_args()
    work, docs = Path(args.work), Path(args.docs)
    work.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    fleet = ["--hospitals", "500", "--rows"]
    cases = [("demo", "readmission.yaml", ["--rows", "200000"], 1700, False),
             ("fleet-500", "readmission_fleet.yaml", [*fleet, str(args.fleet_rows)], 2600,
              False),
             ("demo-monitored", "readmission.yaml", ["--rows", "200000", "--seed", "7"], 2600,
              True),
             ("fleet-500-monitored", "readmission_fleet.yaml",
              [*fleet, str(args.monitored_fleet_rows), "--seed", "7"], 3200, True)]
    lines = []
    for name, spec, data_args, height, monitored in cases:
        if args.only and name not in args.only:
            continue
        store, run_id = _pipeline(work, name, spec, data_args, monitored)
        page, seconds = _render(store, run_id)
        wall = _cli_seconds(store, run_id)
        _screenshot(page, docs / f"{name}.png", height)
        size = page.stat().st_size
        lines.append(f"| {name} | `{' '.join(data_args)}` | {size:,} | {seconds:.2f} s | "
                     f"{wall:.2f} s | "
                     f"docs/report/{name}.png ({(docs / f'{name}.png').stat().st_size:,} "
                     "bytes) |")
    print(f"Machine: {platform.node()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; `python bench/report_screenshots.py`\n")
    print("| report | data | report.html bytes | render (in process) | `batchline report` "
          "wall | screenshot |")
    print("|---|---|---:|---:|---:|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
