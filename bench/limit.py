"""The limit: the demo's work in one Python process, with no orchestration at all.

DuckDB reads the CSV with the spec's typed columns (ingest), runs the spec's
own feature SQL into Arrow (features), LightGBM fits with the spec's
parameters on a time split with an early-stopping slice carved the same way
(train), then predicts the unlabelled rows and writes Parquet (score). No
validation, quarantine, commits, manifests or stage processes: what is left
is what the work itself costs, so batchline's overhead is its ratio to this.

Prints one JSON line on stdout: seconds per phase, rows, validation AUC.
Usage: python bench/limit.py CSV OUT_DIR [--spec jobs/readmission.yaml]
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


def run(csv: str, out_dir: str, spec_path: str) -> dict[str, object]:
    spec = yaml.safe_load(Path(spec_path).read_text())["stages"]
    ingest, feats, train = (spec[s]["params"] for s in ("ingest", "features", "train"))
    score = spec["score"]["params"]
    phases: dict[str, float] = {}
    started = t = time.monotonic()

    con = duckdb.connect(config={"threads": feats.get("threads", 2),
                                 "memory_limit": feats.get("memory_limit", "512MB")})
    columns = ", ".join(f"'{n}': '{DUCK_TYPES[k]}'" for n, k in ingest["columns"].items())
    con.execute(f"CREATE TABLE encounters AS SELECT * FROM read_csv('{csv}', header=true, "
                f"columns={{{columns}}}, dateformat='%Y-%m-%d')")
    phases["ingest"] = time.monotonic() - t

    t = time.monotonic()
    order = feats.get("order_by") or "ALL"
    table = con.sql(f"SELECT * FROM (\n{feats['sql'].strip().rstrip(';')}\n) "
                    f"ORDER BY {order}").to_arrow_table()
    con.close()
    phases["features"] = time.monotonic() - t

    t = time.monotonic()
    label, time_col = train["label"], train["time_column"]
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
    population = table.filter(pc.is_null(table.column(label)))
    scores = booster.predict(_matrix(population, features, categorical), num_iteration=best,
                             num_threads=params["num_threads"])
    ids = score.get("id_columns", ["encounter_id"])
    out = pa.table({**{c: population.column(c) for c in ids}, "score": scores})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pq.write_table(out, Path(out_dir) / "predictions.parquet")
    phases["score"] = time.monotonic() - t
    return {"rows": table.num_rows, "auc_valid": round(auc, 5), "best_iteration": best,
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "seconds": round(time.monotonic() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("out_dir")
    parser.add_argument("--spec", default=str(HERE.parent / "jobs" / "readmission.yaml"))
    args = parser.parse_args()
    result = run(args.csv, args.out_dir, args.spec)
    print(json.dumps(result, sort_keys=True))
    print(f"limit: {result['rows']} rows, valid AUC {result['auc_valid']}, "
          f"{result['seconds']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
