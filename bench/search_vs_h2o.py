"""batchline's search against H2O AutoML at the same time budget per model.

Both get the same rows of the demo data's features (made by the readmission
spec's ingest and features stages) and the same split: batchline's time
split holds the most recent rows out as validation; H2O AutoML trains on
every other row (its own cross-validation inside), batchline's search
carves its fitting, early-stopping and selection slices from those same
rows. Both are judged by the same AUC code on the same validation rows.
Each model gets `--budget` seconds: `search.budget_seconds` (with
max_trials high enough not to bind) and `H2OAutoML(max_runtime_secs=...)`.
Wall time is measured around the fit alone for both (H2O's start-up and the
upload of each frame are reported apart). Models: the whole data, then the
`--hospitals` largest hospitals, one model each. Results go to
bench/results.md with the machine and its load.

Usage: python bench/search_vs_h2o.py [--rows 200000] [--budget 60] [--hospital-budget 20]
       [--hospitals 3] [--out bench/data/search]
Needs: pip install -e '.[bench]' (h2o) and Java 17+ on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batchline import cpu, storage
from batchline.metrics import auc
from batchline.params import TrainParams
from batchline.spec import load_spec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "jobs" / "readmission.yaml"
THREADS = 2


def features(rows: int, out: Path) -> tuple[pa.Table, dict[str, Any]]:
    """The readmission spec's features for `rows` demo encounters (made once per size)."""
    data, store = out / f"demo-{rows}", out / f"store-{rows}"
    uri = store / "runs" / "bench" / "features" / "features"
    if not (uri / "_SUCCESS.json").exists():
        cli = [sys.executable, "-m", "batchline.cli"]
        subprocess.run([*cli, "demo-data", "--rows", str(rows), "--out", str(data)], check=True)
        subprocess.run([*cli, "run", str(SPEC), "--storage", str(store), "--run-id", "bench",
                        "--stages", "ingest,features",
                        "--set", f"stages.ingest.params.source={data / 'encounters.csv'}"],
                       check=True)
    generator = json.loads((data / "_generator.json").read_text())
    return storage.open_dataset(str(uri)).to_table(), generator


def train_params(budget: float) -> TrainParams:
    spec = load_spec(SPEC, {"stages.ingest.params.source": "unused.csv"})
    base = spec.params("train").model_dump()
    return TrainParams(**{**base, "num_threads": THREADS,
                          "search": {"budget_seconds": budget, "max_trials": 10_000}})


def valid_mask(table: pa.Table, params: TrainParams) -> np.ndarray:
    """Which labelled rows are validation rows under the spec's split (as train sees them)."""
    from batchline.stages import split as splits
    from batchline.stages.train import split_rows

    roles = split_rows(params.model_copy(update={"search": None}),
                       table[params.effective_split.column], table.num_rows)  # type: ignore[union-attr]
    return roles.roles == splits.VALID


def run_batchline(table: pa.Table, params: TrainParams) -> dict[str, Any]:
    # imported here: LightGBM must load after cpu.apply() set OpenMP's wait policy
    from batchline.stages.train import load_training_data, train

    data = load_training_data(ds.dataset(table), params)
    started = time.monotonic()
    model = train(data, params)
    seconds = time.monotonic() - started
    found = model.metrics["search"]
    return {"auc": model.metrics["auc_valid"], "seconds": round(seconds, 1),
            "winner": f"{found['winner']['kind']} #{found['winner']['trial']}",
            "candidates": found["candidates"], "stopped_by": found["stopped_by"],
            "spec_params_auc": found["spec_params_valid"],
            "linear_selection_auc": found["linear_baseline_selection"],
            "rows_valid": model.metrics["rows_valid"]}


def run_h2o(table: pa.Table, params: TrainParams, budget: float, h2o: Any) -> dict[str, Any]:
    from h2o.automl import H2OAutoML

    valid = valid_mask(table, params)
    split_col = params.effective_split.column  # type: ignore[union-attr]
    drop = {*params.exclude, split_col}
    frame = table.drop_columns([c for c in table.column_names if c in drop]).to_pandas()
    label = params.label
    started = time.monotonic()
    train_frame = h2o.H2OFrame(frame[~valid])
    valid_frame = h2o.H2OFrame(frame[valid].drop(columns=[label]),
                               column_types=train_frame.drop(label).types)
    train_frame[label] = train_frame[label].asfactor()
    upload = time.monotonic() - started
    started = time.monotonic()
    aml = H2OAutoML(max_runtime_secs=round(budget), seed=1, sort_metric="AUC",
                    verbosity=None)
    aml.train(y=label, training_frame=train_frame)
    seconds = time.monotonic() - started
    pred = aml.leader.predict(valid_frame).as_data_frame(use_multi_thread=False)
    score = pred["p1"].to_numpy() if "p1" in pred else pred.iloc[:, -1].to_numpy()
    y = frame[label][valid].to_numpy()
    leaderboard = aml.leaderboard.as_data_frame(use_multi_thread=False)
    return {"auc": round(auc(y, score), 5), "seconds": round(seconds, 1),
            "upload_seconds": round(upload, 1), "models": len(leaderboard),
            "leader": str(aml.leader.model_id).split("_AutoML")[0],
            "rows_valid": int(valid.sum())}


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.platform()}, Python {platform.python_version()}, {cpus} cores, " \
           f"{mem:.0f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--hospital-budget", type=float, default=20.0)
    parser.add_argument("--hospitals", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "data" / "search")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # As the stage entrypoint does: a CPU budget and OpenMP threads that wait
    # passively, so LightGBM does not collapse on a busy machine (see cpu.py).
    cpu.apply(str(THREADS))
    table, generator = features(args.rows, args.out)
    import h2o

    started = time.monotonic()
    h2o.init(nthreads=THREADS, max_mem_size="6G", verbose=False)
    h2o.no_progress()
    h2o_start = time.monotonic() - started
    labelled = table.filter(pc.is_valid(table["readmitted_30d"]))
    counts = labelled.group_by("hospital_id").aggregate([("hospital_id", "count")])
    top = counts.sort_by([("hospital_id_count", "descending")]).slice(0, args.hospitals)
    models: list[tuple[str, pa.Table, float]] = [("all hospitals", labelled, args.budget)]
    models += [(h, labelled.filter(pc.equal(labelled["hospital_id"], h)), args.hospital_budget)
               for h in top["hospital_id"].to_pylist()]
    rows = []
    for name, subset, budget in models:
        params = train_params(budget)
        load = os.getloadavg()[0]
        ours = run_batchline(subset, params)
        theirs = run_h2o(subset, params, budget, h2o)
        assert ours["rows_valid"] == theirs["rows_valid"], (ours, theirs)
        rows.append((name, subset.num_rows, budget, load, ours, theirs))
        print(name, json.dumps(ours), json.dumps(theirs), flush=True)
    h2o.cluster().shutdown()
    write(args, rows, generator, h2o_start, h2o.__version__)


def write(args: argparse.Namespace, rows: list[Any], generator: dict[str, Any],
          h2o_start: float, h2o_version: str) -> None:
    import lightgbm
    import optuna

    lines = [
        "", f"## search vs H2O AutoML, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        f"`python bench/search_vs_h2o.py --rows {args.rows} --budget {args.budget} "
        f"--hospital-budget {args.hospital_budget} --hospitals {args.hospitals}`. Machine: "
        f"{machine()}, shared with other sessions (load average at each model's start in the "
        f"table). Both {THREADS} threads; LightGBM {lightgbm.__version__}, Optuna "
        f"{optuna.__version__}, H2O {h2o_version} (start-up {h2o_start:.1f} s, not counted). "
        f"The generator's best possible AUC (its own probabilities): {generator.get('best_auc')} "
        f"on all labelled rows, {generator.get('best_auc_recent')} on the most recent fifth "
        "(about the validation rows of the all-hospitals model).", "",
        "| model | labelled rows | valid rows | budget s | load | batchline AUC | H2O AUC | "
        "spec params AUC | batchline s | H2O s | candidates (stopped by), winner | H2O models "
        "(leader) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, n, budget, load, ours, theirs in rows:
        lines.append(
            f"| {name} | {n:,} | {ours['rows_valid']:,} | {budget:g} | {load:.1f} | "
            f"{ours['auc']:.4f} | {theirs['auc']:.4f} | {ours['spec_params_auc']:.4f} | "
            f"{ours['seconds']} | {theirs['seconds']} (+{theirs['upload_seconds']} upload) | "
            f"{ours['candidates']} ({ours['stopped_by']}), {ours['winner']} | {theirs['models']} "
            f"({theirs['leader']}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    with args.results.open("a") as out:
        out.write(text)


if __name__ == "__main__":
    main()
