"""Where each stage's time goes: one pipeline run with every stage under cProfile.

Runs `batchline run jobs/readmission.yaml` once (or once per source tree given
with --tree, e.g. the code before a change) with bench/profile/ on PYTHONPATH,
whose sitecustomize profiles each stage process from start-up to exit. Prints,
per stage: wall seconds (process start to exit, from the manifest), seconds
in imports, and the functions with the most cumulative time. Markdown, for
bench/results.md.

Usage: python bench/profile_stages.py [--rows 1000000] [--tree LABEL=DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "jobs" / "readmission.yaml"
STAGES = ("ingest", "features", "train", "score")
# Frames worth naming: our code, and the libraries' entry points.
KEEP = ("batchline/", "lightgbm/engine.py", "lightgbm/basic.py", "duckdb", "pyarrow",
        "numpy")
SKIP = ("<frozen", "__init__", "<module>", "stage.py:", "task.py:", "_bootstrap")


def _imports(stats: pstats.Stats) -> float:
    raw = stats.stats  # type: ignore[attr-defined]
    return max((v[3] for k, v in raw.items() if k[2] == "_find_and_load"), default=0.0)


def _top(stats: pstats.Stats, n: int) -> list[tuple[float, str]]:
    raw = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_, _, _, cum, _) in raw.items():
        label = f"{filename}:{line}({name})" if filename != "~" else name
        if not any(k in label for k in KEEP) or any(s in label for s in SKIP):
            continue
        short = label.split("site-packages/")[-1].split("src/")[-1]
        rows.append((cum, short))
    return sorted(rows, reverse=True)[:n]


def _knows_warm(tree: Path) -> bool:
    return (tree / "src" / "batchline" / "standby.py").exists()


def profile(label: str, tree: Path, src: Path, data: Path, top: int) -> list[str]:
    out = data / f"profile-{label}"
    store = data / f"profile-store-{label}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "BATCHLINE_BENCH_PROFILE": str(out),
           "PYTHONPATH": os.pathsep.join([str(HERE / "profile"), str(tree / "src")])}
    subprocess.run([sys.executable, "-m", "batchline.cli", "run", str(SPEC), "--storage",
                    str(store), "--run-id", "profile", "--set",
                    f"stages.ingest.params.source={src / 'encounters.csv'}",
                    # Each stage in a process of its own from start to exit: a process
                    # started ahead would be profiled under the name '--standby'.
                    *(["--option", "warm=false"] if _knows_warm(tree) else [])],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    manifest = json.loads((store / "runs" / "profile" / "manifest.json").read_text())
    lines = [f"### {label}", ""]
    for stage in STAGES:
        attempt = manifest["stages"][stage]["attempts"][-1]
        wall = attempt["ended_at"] - attempt["started_at"]
        stats = pstats.Stats(str(out / f"{stage}.prof"))
        total = stats.total_tt  # type: ignore[attr-defined]
        lines += [f"**{stage}**: {wall:.1f} s wall (process start to exit), {total:.1f} s "
                  f"profiled; largest import tree {_imports(stats):.1f} s.", "",
                  "| cumulative s | function |", "|---:|---|"]
        lines += [f"| {cum:.2f} | `{name}` |" for cum, name in _top(stats, top)]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tree", nargs="+", default=[f"current={ROOT}"],
                        help="LABEL=DIR: a source tree (with src/) to profile")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "data"))
    args = parser.parse_args()
    data = Path(args.out)
    src = data / f"rows-{args.rows}"
    if not (src / "encounters.csv").exists():
        subprocess.run([sys.executable, "-m", "batchline.cli", "demo-data", "--rows",
                        str(args.rows), "--out", str(src)], check=True, cwd=ROOT)
    lines = [f"## Per-stage profile, {args.rows:,} rows", ""]
    for item in args.tree:
        label, _, tree = item.partition("=")
        lines += profile(label, Path(tree).resolve(), src, data, args.top)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
