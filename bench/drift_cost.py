"""What drift costs score: the same scoring run with and without its histograms.

For each size, the demo pipeline runs once (ingest, features, train); then
score runs again and again on the whole features table (`population: all`,
so every row is scored), alternating drift on and off (`--force score`, a
new run each time) so both see the same machine. Measured per run: the
score stage's wall time (process start to exit, from the manifest) and its
peak RSS (sampled, bench/run.py's `measure`). Prints a Markdown table for
bench/results.md.

Usage: python bench/drift_cost.py [--rows 1000000 5000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import ROOT, SPEC, machine, measure  # noqa: E402


def _score(store: Path, src: Path, run_id: str, drift: bool) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "batchline.cli", "run", str(SPEC), "--storage", str(store),
           "--run-id", run_id, "--force", "score",
           "--set", f"stages.ingest.params.source={src / 'encounters.csv'}",
           "--set", "stages.score.params.population=all",
           "--set", f"stages.score.params.drift.enabled={str(drift).lower()}"]
    measured = measure(cmd)
    if measured.returncode != 0:
        raise SystemExit(f"score run {run_id} failed")
    manifest = json.loads((store / "runs" / run_id / "manifest.json").read_text())
    attempt = manifest["stages"]["score"]["attempts"][-1]
    rows = manifest["stages"]["score"].get("rows") or 0
    return attempt["ended_at"] - attempt["started_at"], measured.per_stage_peak_mb["score"], rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "data"))
    args = parser.parse_args()
    lines = [f"Machine: {machine()}", "",
             "| rows scored | drift | score wall s (median) | score peak RSS MB (median) |",
             "|---:|---|---:|---:|"]
    for rows in args.rows:
        src = Path(args.out) / f"rows-{rows}"
        if not (src / "encounters.csv").exists():
            subprocess.run([sys.executable, "-m", "batchline.cli", "demo-data", "--rows",
                            str(rows), "--out", str(src)], check=True, cwd=ROOT)
        store = Path(args.out) / f"drift-store-{rows}"
        results: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
        for i in range(args.repeats):
            for drift in (False, True) if i % 2 == 0 else (True, False):
                results[drift].append(_score(store, src, f"{'on' if drift else 'off'}-{i}",
                                             drift))
        for drift in (False, True):
            walls = [w for w, _, _ in results[drift]]
            peaks = [p for _, p, _ in results[drift]]
            scored = results[drift][0][2]
            lines.append(f"| {scored:,} | {'on' if drift else 'off'} | "
                         f"{statistics.median(walls):.2f} | {statistics.median(peaks):.0f} |")
            print(f"{rows} drift={drift}: walls {[round(w, 2) for w in walls]}, "
                  f"peaks {[round(p) for p in peaks]}", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
