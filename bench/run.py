"""The demo against the limit: batchline, the one-process limit and a pandas script.

Every contender runs as a child process on the same CSV, interleaved round by
round (round 1: each contender once, round 2: each again, ...), so on a
shared machine they meet the same conditions; medians are reported. The
resident memory of each process tree is sampled every 20 ms. With `--busy`
each contender also runs, in the same round, while a bounded CPU hog (one
single-threaded spin loop, killed when the contender ends and in any case
after `--hog-seconds`) occupies one core.

Contenders: `batchline` (`batchline run jobs/readmission.yaml`, local
backend), `limit` (bench/limit.py: the same work in one process, no
orchestration), `handoffs` (bench/limit.py --handoffs: the limit plus the
Parquet write and read at every stage boundary, the floor of any staged
design), `pandas` (bench/pandas_baseline.py) and, with `--before
DIR`, `before`: batchline from another source tree (e.g. `git archive main
src | tar -x -C DIR`). Results are appended to bench/results.md as ratios to
the limit.

Usage: python bench/run.py [--rows 1000000 5000000] [--rounds 3] [--busy]
       [--contenders batchline limit pandas] [--before DIR] [--out bench/data]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "jobs" / "readmission.yaml"
PHASES = ("ingest", "features", "train", "score")
HOG = "import time\nend = time.monotonic() + float({seconds})\nwhile time.monotonic() < end:\n" \
      "    pass\n"


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    per_stage_peak_mb: dict[str, float] = field(default_factory=dict)
    # stage processes by pid: a process started ahead names its stage only in the manifest
    per_pid_peak_mb: dict[int, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    returncode: int = 0
    auc: float | None = None
    output: str = ""
    load: float = 0.0  # the machine's 1-minute load average when the run started
    cpu_seconds: float = 0.0  # user + system time of the whole process tree


def _stage_of(proc: psutil.Process) -> str | None:
    """The stage a process runs; "" for one started ahead (`--standby`: only the manifest
    knows its stage); None when it is no stage process."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    if "batchline.stage" in cmd:
        stage = cmd[cmd.index("batchline.stage") + 1]
        return "" if stage.startswith("-") else stage
    return None


def measure(cmd: list[str], env: dict[str, str] | None = None, busy: float = 0.0) -> Measured:
    """Run `cmd` (beside a CPU hog when `busy`); sample the summed RSS of its process tree."""
    load = os.getloadavg()[0]
    hog = subprocess.Popen([sys.executable, "-c", HOG.format(seconds=busy)]) if busy else None
    try:
        # Children's CPU time is summed into RUSAGE_CHILDREN as each is reaped; the hog
        # is reaped only after the delta is taken, so it never counts.
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        root = psutil.Process(proc.pid)
        peak = 0.0
        stages: dict[str, float] = {}
        pids: dict[int, float] = {}
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
                if stage is not None:
                    pids[p.pid] = max(pids.get(p.pid, 0.0), rss)
                if stage:
                    stages[stage] = max(stages.get(stage, 0.0), rss)
            peak = max(peak, total)
            time.sleep(0.02)
        output = proc.stdout.read() if proc.stdout else ""
        proc.wait()
        seconds = time.monotonic() - started
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        print(output, file=sys.stderr)
    return Measured(round(seconds, 2), round(peak), {k: round(v) for k, v in stages.items()},
                    {k: round(v) for k, v in pids.items()},
                    returncode=proc.returncode, output=output, load=round(load, 1),
                    cpu_seconds=round(cpu_seconds, 1))


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


def _stage_seconds(manifest: dict[str, object]) -> dict[str, float]:
    """Wall seconds of each stage's last attempt (process start to exit)."""
    out = {}
    for name, record in manifest["stages"].items():  # type: ignore[attr-defined]
        attempts = record.get("attempts") or []
        if attempts and attempts[-1].get("ended_at"):
            out[name] = round(attempts[-1]["ended_at"] - attempts[-1]["started_at"], 2)
    return out


def _started_ahead_peaks(manifest: dict[str, Any], pids: dict[int, float]
                         ) -> dict[str, float]:
    """Peak RSS of stages that ran in a process started ahead (`--standby` on its command
    line), found by the pid the manifest's attempts record (`backend_ref` "pid N")."""
    out: dict[str, float] = {}
    for name, record in manifest["stages"].items():
        for attempt in record.get("attempts") or []:
            ref = str(attempt.get("backend_ref", ""))
            if ref.startswith("pid ") and int(ref[4:]) in pids:
                out[name] = max(out.get(name, 0.0), pids[int(ref[4:])])
    return out


def run_batchline(src: Path, store: Path, run_id: str, busy: float, pythonpath: str | None,
                  extra_env: dict[str, str] | None = None) -> Measured:
    env = dict(extra_env or {})
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # `python -m batchline` is what the `batchline` command runs (it skips pandas first).
    m = measure([sys.executable, "-m", "batchline", "run", str(SPEC), "--storage",
                 str(store), "--run-id", run_id,
                 "--set", f"stages.ingest.params.source={src / 'encounters.csv'}"], env, busy)
    path = store / "runs" / run_id / "manifest.json"
    if m.returncode == 0 and path.exists():
        manifest = json.loads(path.read_text())
        m.phases = _stage_seconds(manifest)
        m.per_stage_peak_mb.update(_started_ahead_peaks(manifest, m.per_pid_peak_mb))
        train = manifest["stages"].get("train", {})
        m.auc = train.get("metrics", {}).get("auc_valid")
    return m


def run_limit(src: Path, data: Path, busy: float, handoffs: bool = False) -> Measured:
    m = measure([sys.executable, str(HERE / "limit.py"), str(src / "encounters.csv"),
                 str(data / ("handoffs-out" if handoffs else "limit-out")),
                 *(["--handoffs"] if handoffs else [])], busy=busy)
    if m.returncode == 0:
        line = next(x for x in m.output.splitlines() if x.startswith("{"))
        result = json.loads(line)
        m.phases, m.auc = result["phases"], result["auc_valid"]
    return m


def run_pandas(src: Path, data: Path, busy: float) -> Measured:
    # Passive OpenMP here too: the pandas script is compared on its work, not on spinning.
    return measure([sys.executable, str(HERE / "pandas_baseline.py"),
                    str(src / "encounters.csv"), str(data / "pandas-out")],
                   {"OMP_WAIT_POLICY": "PASSIVE"}, busy)


def bench(rows: int, data: Path, args: argparse.Namespace) -> dict[str, object]:
    src = data / f"rows-{rows}"
    if not (src / "encounters.csv").exists():
        subprocess.run([sys.executable, "-m", "batchline.cli", "demo-data", "--rows", str(rows),
                        "--out", str(src)], check=True, cwd=ROOT)
    (src / "encounters.csv").read_bytes()  # warm the page cache for every contender alike
    modes = [("quiet", 0.0), *([("busy", args.hog_seconds)] if args.busy else [])]
    runs: dict[str, list[Measured]] = {}
    cached: list[Measured] = []
    before_src = str(Path(args.before).resolve() / "src") if args.before else None
    for round_no in range(args.rounds):
        for mode, hog in modes:
            for who in args.contenders:
                key = f"{who}/{mode}"
                print(f"rows {rows:,} round {round_no + 1} {key}", file=sys.stderr, flush=True)
                if who in ("batchline", "before"):
                    store = data / f"store-{who}-{rows}"
                    shutil.rmtree(store, ignore_errors=True)
                    m = run_batchline(src, store, "bench", hog,
                                      before_src if who == "before" else None)
                    if who == "batchline" and mode == "quiet" and m.returncode == 0:
                        cached.append(run_batchline(src, store, f"bench-again-{round_no}",
                                                    0.0, None))
                elif who in ("limit", "handoffs"):
                    m = run_limit(src, data, hog, handoffs=who == "handoffs")
                else:
                    m = run_pandas(src, data, hog)
                print(f"  {m.seconds}s {m.peak_rss_mb}MB {m.phases}", file=sys.stderr,
                      flush=True)
                runs.setdefault(key, []).append(m)
    best = json.loads((src / "_generator.json").read_text())["best_auc_recent"]
    return {"rows": rows, "runs": runs, "cached": cached, "best_auc": best}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def summarize(runs: list[Measured]) -> dict[str, float]:
    ok = [m for m in runs if m.returncode == 0]
    out = {"wall": _median([m.seconds for m in ok]), "rss": _median([m.peak_rss_mb for m in ok]),
           "cpu": _median([m.cpu_seconds for m in ok])}
    for phase in PHASES:
        out[phase] = _median([m.phases[phase] for m in ok if phase in m.phases])
    out["non_train"] = _median([sum(m.phases.get(p, 0.0) for p in PHASES if p != "train")
                                for m in ok if m.phases])
    out["n"] = len(ok)
    out["failed"] = len(runs) - len(ok)
    return out


def report(results: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        f"## Demo pipeline against the limit ({time.strftime('%Y-%m-%d %H:%M')})", "",
        f"Machine: {machine()}; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}.", "",
        f"`python bench/run.py --rows {' '.join(map(str, args.rows))} --rounds {args.rounds}"
        f"{' --busy' if args.busy else ''} --contenders {' '.join(args.contenders)}`: medians "
        "of the rounds, contenders interleaved. Phases: a batchline stage's wall time from "
        "process start to exit (manifest attempts); the limit's phases timed inside its "
        "one process (its interpreter start and imports, about 1-3 s, count only in its "
        "wall). Handoffs: the limit plus a Parquet write and read at each stage boundary "
        "(DuckDB's reader and writer). "
        "Non-train = ingest + features + score. Busy: one core taken by a spin loop. "
        "CPU s: user + system seconds of the whole process tree (the hog excluded), which "
        "other sessions on the machine disturb far less than wall time.",
        "",
        "| rows | contender | mode | wall s | x limit | ingest | features | train | score | "
        "non-train s | x limit | CPU s | x limit | peak RSS MB | x limit | runs |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loads: list[str] = []
    for r in results:
        runs = r["runs"]
        assert isinstance(runs, dict)
        for key, measured in runs.items():
            who, mode = key.split("/")
            s = summarize(measured)
            lim = summarize(runs.get(f"limit/{mode}", []))

            def ratio(a: float, b: float) -> str:
                return f"{a / b:.2f}" if b and b == b and a == a else ""
            lines.append(
                f"| {r['rows']:,} | {who} | {mode} | {s['wall']} | {ratio(s['wall'], lim['wall'])}"
                f" | {s['ingest']} | {s['features']} | {s['train']} | {s['score']} | "
                f"{s['non_train']} | {ratio(s['non_train'], lim['non_train'])} | "
                f"{s['cpu']} | {ratio(s['cpu'], lim['cpu'])} | "
                f"{s['rss']:.0f} | {ratio(s['rss'], lim['rss'])} | {s['n']}"
                f"{' (' + str(s['failed']) + ' failed)' if s['failed'] else ''} |")
        cached = r["cached"]
        if isinstance(cached, list) and cached:
            again = statistics.median(c.seconds for c in cached)
            rss = statistics.median(c.peak_rss_mb for c in cached)
            cpu = statistics.median(c.cpu_seconds for c in cached)
            lines.append(f"| {r['rows']:,} | batchline, unchanged rerun | quiet | "
                         f"{again:.2f} | | | | | | | | {cpu:.1f} | | {rss:.0f} | | "
                         f"{len(cached)} |")
        loads.append(f"{r['rows']:,} rows: " + ", ".join(
            f"{key} {min(m.load for m in ms):.1f}-{max(m.load for m in ms):.1f}"
            for key, ms in runs.items()))
    lines += ["", "Load average (1 min) when the runs started (2 cores; other sessions "
              f"share the machine): {'; '.join(loads)}."]
    if args.busy:
        lines += ["", "Busy over quiet, per phase (medians; goal: no stage above 1.6x):", "",
                  "| rows | contender | wall | ingest | features | train | score |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for r in results:
            runs = r["runs"]
            assert isinstance(runs, dict)
            for who in args.contenders:
                q, b = summarize(runs.get(f"{who}/quiet", [])), \
                    summarize(runs.get(f"{who}/busy", []))
                cells = [f"{b[k] / q[k]:.2f}" if q[k] else "" for k in ("wall", *PHASES)]
                lines.append(f"| {r['rows']:,} | {who} | {' | '.join(cells)} |")
    aucs = [f"{r['rows']:,}: batchline "
            f"{[m.auc for m in r['runs'].get('batchline/quiet', [])][:1]}, "  # type: ignore[attr-defined]
            f"limit {[m.auc for m in r['runs'].get('limit/quiet', [])][:1]}, best "  # type: ignore[attr-defined]
            f"{r['best_auc']}" for r in results]
    lines += ["", f"Validation AUC: {'; '.join(aucs)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", action="store_true",
                        help="also run every contender beside a CPU hog on one core")
    parser.add_argument("--hog-seconds", type=float, default=900.0,
                        help="upper bound of the hog's life (it is killed earlier)")
    parser.add_argument("--contenders", nargs="+", default=["batchline", "limit", "pandas"],
                        choices=["batchline", "before", "limit", "handoffs", "pandas"])
    parser.add_argument("--before", help="a source tree (with src/) to run as `before`")
    parser.add_argument("--out", default=str(HERE / "data"))
    parser.add_argument("--no-append", action="store_true",
                        help="print the report without appending it to bench/results.md")
    args = parser.parse_args()
    if "before" in args.contenders and not args.before:
        parser.error("--contenders before needs --before DIR")
    data = Path(args.out)
    data.mkdir(parents=True, exist_ok=True)
    # An installed batchline (a wheel, an image) has its bytecode; a source tree run with
    # PYTHONDONTWRITEBYTECODE set would compile every module in every stage process.
    for tree in [ROOT, *([Path(args.before)] if args.before else [])]:
        compileall.compile_dir(str(tree / "src"), quiet=1)
    results = [bench(rows, data, args) for rows in args.rows]
    text = report(results, args)
    print(text)
    if not args.no_append:
        with open(HERE / "results.md", "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
