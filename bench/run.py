"""The demo at 1M and 5M rows: batchline (local backend) against a pandas script.

Both run as child processes on the same CSV, one after the other, while this
script samples the resident memory of each process tree every 20 ms, so the
two are measured the same way in the same run. Results are appended to
bench/results.md with a description of the machine.

Usage: python bench/run.py [--rows 1000000 5000000] [--out bench/data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "jobs" / "readmission.yaml"


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    per_stage_peak_mb: dict[str, float] = field(default_factory=dict)
    returncode: int = 0


def _stage_of(proc: psutil.Process) -> str | None:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    if "batchline.stage" in cmd:
        return cmd[cmd.index("batchline.stage") + 1]
    return None


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `cmd`; sample the summed RSS of its process tree until it exits."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = 0.0
    stages: dict[str, float] = {}
    while proc.poll() is None:
        total = 0.0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in tree:
            try:
                rss = p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            total += rss
            stage = _stage_of(p)
            if stage:
                stages[stage] = max(stages.get(stage, 0.0), rss)
        peak = max(peak, total)
        time.sleep(0.02)
    output = proc.stdout.read() if proc.stdout else ""
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        print(output, file=sys.stderr)
    return Measured(round(seconds, 1), round(peak), {k: round(v) for k, v in stages.items()},
                    proc.returncode)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line)
    except (OSError, StopIteration):
        model = cpu
    mem = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def bench(rows: int, data: Path) -> dict[str, object]:
    src = data / f"rows-{rows}"
    if not (src / "encounters.csv").exists():
        subprocess.run([sys.executable, "-m", "batchline.cli", "demo-data", "--rows", str(rows),
                        "--out", str(src)], check=True, cwd=ROOT)
    # Warm the page cache for both contenders alike.
    (src / "encounters.csv").read_bytes()
    store = data / f"store-{rows}"
    shutil.rmtree(store, ignore_errors=True)
    ours = measure([sys.executable, "-m", "batchline.cli", "run", str(SPEC), "--storage",
                    str(store), "--run-id", "bench",
                    "--set", f"stages.ingest.params.source={src / 'encounters.csv'}"])
    manifest = json.loads((store / "runs" / "bench" / "manifest.json").read_text())
    auc = manifest["stages"]["train"]["metrics"]["auc_valid"]
    cached = measure([sys.executable, "-m", "batchline.cli", "run", str(SPEC), "--storage",
                      str(store), "--run-id", "bench-again",
                      "--set", f"stages.ingest.params.source={src / 'encounters.csv'}"])
    theirs = measure([sys.executable, str(HERE / "pandas_baseline.py"),
                      str(src / "encounters.csv"), str(data / f"pandas-{rows}")])
    best = json.loads((src / "_generator.json").read_text())["best_auc_recent"]
    return {"rows": rows, "batchline": ours, "cached_rerun": cached, "pandas": theirs,
            "auc": auc, "best_auc": best}


def report(results: list[dict[str, object]]) -> str:
    lines = [
        f"## Demo pipeline vs a pandas script ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}.", "",
        "`make bench` (bench/run.py): batchline = `batchline run jobs/readmission.yaml` on the "
        "local backend (four stage processes, local storage); pandas = bench/pandas_baseline.py "
        "(read_csv, pandas features, LightGBM fit, predict, to_parquet) in one process. Peak "
        "RSS is the summed resident memory of each process tree, sampled every 20 ms.", "",
        "| rows | contender | wall s | peak RSS MB | ingest | features | train | score | "
        "valid AUC (best) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ours, cached, theirs = r["batchline"], r["cached_rerun"], r["pandas"]
        assert isinstance(ours, Measured) and isinstance(theirs, Measured)
        assert isinstance(cached, Measured)
        s = ours.per_stage_peak_mb
        lines.append(f"| {r['rows']:,} | batchline | {ours.seconds} | {ours.peak_rss_mb:.0f} | "
                     f"{s.get('ingest', 0)} | {s.get('features', 0)} | {s.get('train', 0)} | "
                     f"{s.get('score', 0)} | {r['auc']} ({r['best_auc']}) |")
        lines.append(f"| {r['rows']:,} | batchline, unchanged rerun | {cached.seconds} | "
                     f"{cached.peak_rss_mb:.0f} | | | | | |")
        lines.append(f"| {r['rows']:,} | pandas script | {theirs.seconds} | "
                     f"{theirs.peak_rss_mb:.0f} | | | | | |")
    score = [r["batchline"].per_stage_peak_mb.get("score", 0) for r in results  # type: ignore[union-attr]
             ]
    if len(score) == 2 and score[0]:
        lines += ["", f"Score stage peak RSS, largest over smallest input: "
                  f"{score[1] / score[0]:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--out", default=str(HERE / "data"))
    args = parser.parse_args()
    data = Path(args.out)
    data.mkdir(parents=True, exist_ok=True)
    results = [bench(rows, data) for rows in args.rows]
    text = report(results)
    print(text)
    with open(HERE / "results.md", "a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
