"""The limit: the demo's work in one Python process, with no orchestration at all.

DuckDB reads the CSV with the spec's typed columns (ingest), runs the spec's
own feature SQL into Arrow (features), LightGBM fits with the spec's
parameters on a time split with an early-stopping slice carved the same way
(train), then predicts the unlabelled rows and writes Parquet (score). No
validation, quarantine, commits, manifests or stage processes: what is left
is what the work itself costs, so batchline's overhead is its ratio to this.

With `--handoffs` the same process also pays what batchline's design makes
every stage boundary cost, done the cheapest way known here (DuckDB's own
multi-threaded Parquet reader and writer, zstd as batchline writes): ingest
writes its table to Parquet, features loads it back and writes its result,
train reads that, and score reads only its unlabelled rows from it. Still no
validation, quarantine, commits or stage processes: the floor of a staged
pipeline, to tell what the hand-offs cost from what batchline adds.

Prints one JSON line on stdout: seconds per phase, rows, validation AUC.
Usage: python bench/limit.py CSV OUT_DIR [--spec jobs/readmission.yaml] [--handoffs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# The same policy batchline's stages use, set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY",
                      os.environ.get("BATCHLINE_OMP_WAIT_POLICY", "passive").upper())

import duckdb
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent
DUCK_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN",
              "date": "DATE", "timestamp": "TIMESTAMP"}


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _matrix(table: pa.Table, features: list[str], categorical: list[str]) -> np.ndarray:
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = table.column(name)
        if name in categorical:
            column = pc.dictionary_encode(column).combine_chunks().indices
        x[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return x


def run(csv: str, out_dir: str, spec_path: str, handoffs: bool = False) -> dict[str, object]:
    spec = yaml.safe_load(Path(spec_path).read_text())["stages"]
    ingest, feats, train = (spec[s]["params"] for s in ("ingest", "features", "train"))
    score = spec["score"]["params"]
    phases: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encounters_file, features_file = out / "encounters.parquet", out / "features.parquet"
    started = t = time.monotonic()

    def connect() -> duckdb.DuckDBPyConnection:
        return duckdb.connect(config={"threads": feats.get("threads", 2),
                                      "memory_limit": feats.get("memory_limit", "512MB")})

    con = connect()
    columns = ", ".join(f"'{n}': '{DUCK_TYPES[k]}'" for n, k in ingest["columns"].items())
    con.execute(f"CREATE TABLE encounters AS SELECT * FROM read_csv('{csv}', header=true, "
                f"columns={{{columns}}}, dateformat='%Y-%m-%d')")
    if handoffs:
        con.execute(f"COPY encounters TO '{encounters_file}' (FORMAT parquet, "
                    "COMPRESSION zstd)")
        con.close()
    phases["ingest"] = time.monotonic() - t

    t = time.monotonic()
    if handoffs:
        con = connect()
        con.execute(f"CREATE TABLE encounters AS SELECT * FROM "
                    f"read_parquet('{encounters_file}')")
    order = feats.get("order_by") or "ALL"
    query = f"SELECT * FROM (\n{feats['sql'].strip().rstrip(';')}\n) ORDER BY {order}"
    if handoffs:
        con.execute(f"COPY ({query}) TO '{features_file}' (FORMAT parquet, "
                    "COMPRESSION zstd)")
    else:
        table = con.sql(query).to_arrow_table()
    con.close()
    phases["features"] = time.monotonic() - t

    t = time.monotonic()
    label, time_col = train["label"], train["time_column"]
    if handoffs:
        table = pq.read_table(features_file)
    exclude = {label, time_col, *train.get("exclude", [])}
    categorical = list(train.get("categorical", []))
    features = [n for n in table.column_names if n not in exclude]
    labelled = table.filter(pc.is_valid(table.column(label)))
    labelled = labelled.sort_by(time_col)  # stable: the most recent rows are validation
    x = _matrix(labelled, features, categorical)
    y = labelled.column(label).to_numpy().astype(np.float32)
    n = len(y)
    n_valid = int(n * train.get("valid_fraction", 0.2))
    n_train = n - n_valid
    n_stop = int(n_train * train.get("early_stopping_fraction", 0.1))
    n_fit = n_train - n_stop
    cat = [features.index(c) for c in categorical]
    params = {"objective": "binary", "metric": ["auc", "binary_logloss"],
              "num_leaves": train.get("num_leaves", 31),
              "learning_rate": train.get("learning_rate", 0.05),
              "min_data_in_leaf": train.get("min_data_in_leaf", 100),
              "feature_fraction": train.get("feature_fraction", 0.9),
              "num_threads": train.get("num_threads", 2), "seed": 7, "deterministic": True,
              "force_col_wise": True, "verbosity": -1}
    fit_set = lgb.Dataset(x[:n_fit], y[:n_fit], feature_name=features,
                          categorical_feature=cat, free_raw_data=True)
    stop_set = lgb.Dataset(x[n_fit:n_train], y[n_fit:n_train], reference=fit_set,
                           categorical_feature=cat)
    booster = lgb.train(params, fit_set, num_boost_round=train.get("num_boost_round", 500),
                        valid_sets=[stop_set],
                        callbacks=[lgb.early_stopping(train.get("early_stopping_rounds", 30),
                                                      verbose=False)])
    best = booster.best_iteration or booster.current_iteration()
    auc = _auc(y[n_train:], booster.predict(x[n_train:], num_iteration=best))
    del x
    phases["train"] = time.monotonic() - t

    t = time.monotonic()
    if handoffs:
        population = pq.read_table(features_file, filters=pc.field(label).is_null())
    else:
        population = table.filter(pc.is_null(table.column(label)))
    scores = booster.predict(_matrix(population, features, categorical), num_iteration=best,
                             num_threads=params["num_threads"])
    ids = score.get("id_columns", ["encounter_id"])
    predictions = pa.table({**{c: population.column(c) for c in ids}, "score": scores})
    pq.write_table(predictions, out / "predictions.parquet", compression="zstd")
    phases["score"] = time.monotonic() - t
    return {"rows": table.num_rows, "auc_valid": round(auc, 5), "best_iteration": best,
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "seconds": round(time.monotonic() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("out_dir")
    parser.add_argument("--spec", default=str(HERE.parent / "jobs" / "readmission.yaml"))
    parser.add_argument("--handoffs", action="store_true",
                        help="write and read Parquet between the phases, as stages must")
    args = parser.parse_args()
    result = run(args.csv, args.out_dir, args.spec, args.handoffs)
    print(json.dumps(result, sort_keys=True))
    print(f"limit: {result['rows']} rows, valid AUC {result['auc_valid']}, "
          f"{result['seconds']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
