"""The baseline: the demo's work as one plain pandas script in one process.

read_csv, the same features with pandas (per-patient 365-day history windows,
gap since the last discharge), the same LightGBM fit with a time split and
early stopping, predict the population, to_parquet. No batchline code.
Usage: python bench/pandas_baseline.py CSV OUT_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightgbm as lgb
import pandas as pd


def features(df: pd.DataFrame) -> pd.DataFrame:
    df = df.sort_values(["patient_id", "admit_date", "encounter_id"]).reset_index(drop=True)
    df["length_of_stay"] = (df["discharge_date"] - df["admit_date"]).dt.days
    df["female"] = (df["sex"] == "F").astype(int)
    df["sodium_deviation"] = (df["sodium"] - 139).abs()
    grouped = df.groupby("patient_id", sort=False)
    rolled = (df.set_index("admit_date").groupby("patient_id", sort=False)["length_of_stay"]
              .rolling("365D", closed="left").agg(["count", "mean"]))
    df["prior_admissions_365d"] = rolled["count"].fillna(0).to_numpy()
    df["mean_los_365d"] = rolled["mean"].fillna(0).to_numpy()
    df["los_trend"] = df["length_of_stay"] - rolled["mean"].fillna(
        df["length_of_stay"].astype(float)).to_numpy()
    previous = grouped["discharge_date"].shift(1)
    df["days_since_last_discharge"] = (df["admit_date"] - previous).dt.days.fillna(9999)
    for col in ("hospital_id", "diagnosis_group", "insurance"):
        df[col] = df[col].astype("category")
    return df


def main(csv: str, out_dir: str) -> None:
    started = time.monotonic()
    df = pd.read_csv(csv, parse_dates=["admit_date", "discharge_date"])
    df = features(df)
    label = "readmitted_30d"
    cols = ["age", "female", "hospital_id", "diagnosis_group", "insurance", "length_of_stay",
            "hemoglobin", "creatinine", "sodium", "sodium_deviation", "prior_admissions_5y",
            "prior_admissions_365d", "mean_los_365d", "los_trend", "days_since_last_discharge"]
    labelled = df[df[label].notna()].sort_values("discharge_date")
    cut = int(len(labelled) * 0.8)
    fit, valid = labelled.iloc[:cut], labelled.iloc[cut:]
    params = {"objective": "binary", "metric": "auc", "num_leaves": 31, "learning_rate": 0.08,
              "min_data_in_leaf": 100, "feature_fraction": 0.9, "num_threads": 2, "seed": 7,
              "deterministic": True, "force_col_wise": True, "verbosity": -1}
    booster = lgb.train(params, lgb.Dataset(fit[cols], fit[label]), num_boost_round=400,
                        valid_sets=[lgb.Dataset(valid[cols], valid[label])],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    population = df[df[label].isna()]
    scores = booster.predict(population[cols], num_iteration=booster.best_iteration)
    out = population[["encounter_id", "patient_id"]].assign(score=scores)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out.to_parquet(Path(out_dir) / "predictions.parquet")
    auc = booster.best_score["valid_0"]["auc"]
    print(f"pandas baseline: {len(df)} rows, valid AUC {auc:.4f}, "
          f"{time.monotonic() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
