"""The run report's pictures and size: the demo and a 500-hospital fleet.

    python bench/report_screenshots.py [--work build/report-bench] [--docs docs/report]

Generates the demo data (200,000 rows) and the fleet's (500 hospitals,
4,000,000 rows, as `make fleet-demo`), runs both pipelines locally (skipped
when the run is there already), writes each run's report again, timing it,
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


def _pipeline(work: Path, name: str, spec: str, data_args: list[str]) -> tuple[str, str]:
    """Run the pipeline once (kept between invocations); its storage root and run id."""
    data, store, run_id = work / f"{name}-data", work / f"{name}-store", f"report-{name}"
    if not (data / "encounters.csv").exists():
        _cli("demo-data", *data_args, "--out", str(data))
    if not (store / "runs" / run_id / "manifest.json").exists():
        _cli("run", str(ROOT / "jobs" / spec), "--storage", str(store), "--run-id", run_id,
             "--set", f"stages.ingest.params.source={data / 'encounters.csv'}")
    return str(store), run_id


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
    args = parser.parse_args()
    work, docs = Path(args.work), Path(args.docs)
    work.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    cases = [("demo", "readmission.yaml", ["--rows", "200000"], 1700),
             ("fleet-500", "readmission_fleet.yaml",
              ["--hospitals", "500", "--rows", str(args.fleet_rows)], 2600)]
    lines = []
    for name, spec, data_args, height in cases:
        store, run_id = _pipeline(work, name, spec, data_args)
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
