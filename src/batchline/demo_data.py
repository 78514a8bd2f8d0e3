"""Synthetic 30-day readmission data with a known best achievable AUC.

Patients are drawn with a number of hospital encounters each; every
encounter gets demographics, a hospital, admit and discharge dates, a
diagnosis group, labs and insurance. The label is drawn from a known logistic
model of those fields *and* of the patient's own history in the data (prior
admissions in the last 365 days, days since the last discharge), so a
pipeline has to compute the history windows to do well. The AUC of the true
probabilities against the drawn labels is the best any model can reach; it is
printed and written to `_generator.json` beside the CSV.

Encounters discharged in the last `population_days` before the snapshot date
have no label yet: they are the population to score. For monitoring, the same
seed with a longer `population_days` gives an earlier snapshot of the same
encounters (more of them still to score), and `population_days=0` the same
encounters once every outcome has matured. `label_change` makes the label
model change from that discharge date on (history stops predicting
readmission, diagnoses lose their effect, and low hemoglobin predicts the
opposite), so a model trained before it loses accuracy in the months after.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from batchline.metrics import auc

DIAGNOSES = ("heart_failure", "copd", "pneumonia", "diabetes", "sepsis", "hip_fracture",
             "stroke", "renal_failure", "other")
DIAG_EFFECT = np.array([0.75, 0.6, 0.3, 0.4, 0.55, 0.1, 0.25, 0.8, -0.35])
DIAG_P = np.array([0.12, 0.10, 0.12, 0.10, 0.06, 0.05, 0.06, 0.05, 0.34])
INSURANCE = ("medicare", "medicaid", "private", "self_pay")
INS_EFFECT = np.array([0.10, 0.30, -0.20, 0.15])
START = np.datetime64("2021-01-01")
DAYS = 4 * 365
POPULATION_DAYS = 45


@dataclass(frozen=True)
class DemoSummary:
    rows: int
    labelled: int
    population: int
    best_auc: float
    best_auc_recent: float
    prevalence: float
    path: str


@dataclass(frozen=True)
class Hospitals:
    """How hospitals differ: a baseline risk each and, for a fleet, sizes and local effects.

    Without `weights` every hospital is equally likely and differs only by its
    baseline (the original demo, byte for byte). A fleet (`--hospitals N`)
    gives each hospital a size (the largest about ten times the smallest) and
    its own effect of the history features, so a model per hospital has
    something to find that one global model averages away.
    """

    effect: np.ndarray
    weights: np.ndarray | None = None
    history_effect: np.ndarray | None = None

    @classmethod
    def fleet(cls, count: int, seed: int) -> Hospitals:
        rng = np.random.default_rng([seed, count])  # apart from the encounters' stream
        sizes = rng.permutation(np.geomspace(1.0, 10.0, count))
        return cls(effect=rng.normal(0, 0.35, size=count), weights=sizes / sizes.sum(),
                   history_effect=rng.normal(0, 0.5, size=count))


def _chunk(rng: np.random.Generator, first_patient: int, n_rows: int,
           hospitals: Hospitals, label_change: int | None = None
           ) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of encounters for disjoint patients: (table, p_true, label, discharge_day)."""
    hospital_effect = hospitals.effect
    per_patient = rng.geometric(0.45, size=max(1, n_rows // 2))
    cum = np.cumsum(per_patient)
    n_pat = int(np.searchsorted(cum, n_rows) + 1)
    per_patient = per_patient[:n_pat]
    per_patient[-1] -= int(cum[n_pat - 1] - n_rows) if cum[n_pat - 1] > n_rows else 0
    patient = np.repeat(np.arange(first_patient, first_patient + n_pat), per_patient)
    n = len(patient)

    birth_age = rng.normal(66, 14, size=n_pat).clip(18, 100)
    frailty = rng.normal(0, 0.5, size=n_pat)
    sex = rng.random(n_pat) < 0.52
    home_hospital = rng.integers(0, len(hospital_effect), size=n_pat) \
        if hospitals.weights is None else \
        rng.choice(len(hospital_effect), size=n_pat, p=hospitals.weights)
    insurance = rng.choice(len(INSURANCE), size=n_pat, p=[0.45, 0.2, 0.3, 0.05])

    # Frail patients come back more often: their encounters cluster in time.
    admit = rng.integers(0, DAYS, size=n)
    order = np.lexsort((admit, patient))
    patient, admit = patient[order], admit[order]
    pidx = patient - first_patient
    los = (rng.gamma(2.0, 2.2, size=n) + 0.5 * (frailty[pidx] > 0.5)).astype(np.int64) + 1
    discharge = admit + los

    # History in the data: prior admissions in the 365 days before this one,
    # and days since the previous discharge (same patient).
    key = patient.astype(np.int64) * 100_000 + admit
    lo = np.searchsorted(key, key - 365, side="left")
    prior_365 = np.arange(n) - lo
    same = np.r_[False, patient[1:] == patient[:-1]]
    prev_discharge = np.r_[0, discharge[:-1]]
    gap = np.where(same, admit - prev_discharge, 9999).clip(0, 9999)

    age = (birth_age[pidx] + admit / 365.0).astype(np.int64)
    diag = rng.choice(len(DIAGNOSES), size=n, p=DIAG_P)
    # Fleet data keeps patients at their home hospital, so sizes stay as drawn.
    at_home = rng.random(n) < 0.85  # drawn first: the original demo's order of draws
    elsewhere = rng.integers(0, len(hospital_effect), size=n) if hospitals.weights is None \
        else home_hospital[pidx]
    hospital = np.where(at_home, home_hospital[pidx], elsewhere)
    hemoglobin = rng.normal(12.5, 1.8, size=n) - 0.8 * (frailty[pidx] > 0.3)
    creatinine = np.exp(rng.normal(0.0, 0.35, size=n)) + 0.6 * (diag == 7)
    sodium = rng.normal(139, 3.5, size=n)
    prior_5y = rng.poisson(np.exp(0.2 + frailty[pidx]))

    logit = (-2.9 + 0.25 * (age - 65) / 10 + DIAG_EFFECT[diag]
             + 0.45 * np.minimum(prior_365, 6) + 0.9 * (gap < 30) + 0.35 * (gap < 90)
             + 0.05 * np.minimum(prior_5y, 10) + 0.04 * np.minimum(los, 20)
             + 0.45 * (hemoglobin < 10) + 0.5 * (creatinine > 1.6)
             + 0.20 * (np.abs(sodium - 139) > 6) + INS_EFFECT[insurance[pidx]]
             + hospital_effect[hospital])
    if hospitals.history_effect is not None:
        logit = logit + hospitals.history_effect[hospital] * (
            (gap < 30) + 0.5 * np.minimum(prior_365, 4) - 0.6)
    if label_change is not None:  # a new label model from that day on (same draws)
        changed = discharge >= label_change
        history = 0.45 * np.minimum(prior_365, 6) + 0.9 * (gap < 30) + 0.35 * (gap < 90)
        logit = np.where(changed, logit - history - DIAG_EFFECT[diag]
                         + 0.9 * (hemoglobin > 13.5) - 0.45 * (hemoglobin < 10)
                         + 0.3 * (sodium > 141), logit)
    p = 1 / (1 + np.exp(-logit))
    label = (rng.random(n) < p).astype(np.int64)

    dates = START + admit.astype("timedelta64[D]")
    ddates = START + discharge.astype("timedelta64[D]")
    table = pa.table({
        "encounter_id": pa.array(np.arange(n, dtype=np.int64)),  # renumbered by caller
        "patient_id": pa.array(patient.astype(np.int64)),
        "hospital_id": pa.array([f"H{h:03d}" for h in range(len(hospital_effect))]).take(
            pa.array(hospital)),
        "admit_date": pa.array(dates, type=pa.date32()),
        "discharge_date": pa.array(ddates, type=pa.date32()),
        "age": pa.array(age),
        "sex": pa.array(np.where(sex[pidx], "F", "M")),
        "diagnosis_group": pa.array(np.array(DIAGNOSES)[diag]),
        "hemoglobin": pa.array(hemoglobin.round(1)),
        "creatinine": pa.array(creatinine.round(2)),
        "sodium": pa.array(sodium.round(0)),
        "insurance": pa.array(np.array(INSURANCE)[insurance[pidx]]),
        "prior_admissions_5y": pa.array(prior_5y.astype(np.int64)),
    })
    return table, p, label, discharge


def generate(rows: int, out: str | os.PathLike[str], seed: int = 42,
             chunk_rows: int = 1_000_000, hospitals: int = 60,
             fleet: bool = False, population_days: int = POPULATION_DAYS,
             label_change: str | None = None) -> DemoSummary:
    """Write `encounters.csv` (+ `_generator.json`) with `rows` encounters into `out`.

    With `fleet`, the `hospitals` differ in size and in how history predicts
    readmission (see `Hospitals.fleet`), for one model per hospital. The last
    `population_days` before the snapshot have no label; `label_change` (an ISO
    date) changes the label model from that discharge date on.
    """
    if rows < 100:
        raise ValueError("--rows must be at least 100")
    if not 1 <= hospitals <= 999:
        raise ValueError("--hospitals must be between 1 and 999")
    if not 0 <= population_days <= DAYS:
        raise ValueError(f"--population-days must be between 0 and {DAYS}")
    change_day = None
    if label_change is not None:
        try:
            change_day = int((np.datetime64(label_change, "D") - START).astype(int))
        except ValueError:
            raise ValueError(f"--label-change {label_change!r}: expected a date such as "
                             "2024-01-01") from None
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0, 0.25, size=hospitals)
    mix = Hospitals.fleet(hospitals, seed) if fleet else Hospitals(baseline)
    snapshot_day = DAYS + 10
    path = out_dir / "encounters.csv"
    tmp = out_dir / f".encounters.csv.tmp-{os.getpid()}"
    p_all, y_all, day_all = [], [], []
    written = population = 0
    next_patient = 1
    with open(tmp, "wb") as sink:
        writer: pacsv.CSVWriter | None = None
        while written < rows:
            n_chunk = min(chunk_rows, rows - written)
            table, p, label, discharge = _chunk(rng, next_patient, n_chunk, mix, change_day)
            table = table.slice(0, n_chunk)
            p, label, discharge = p[:n_chunk], label[:n_chunk], discharge[:n_chunk]
            next_patient = int(table["patient_id"][-1].as_py()) + 1
            is_pop = discharge > snapshot_day - population_days
            labels = pa.array(np.where(is_pop, 0, label), mask=is_pop)
            table = table.set_column(0, "encounter_id",
                                     pa.array(np.arange(written + 1, written + 1 + n_chunk)))
            table = table.append_column("readmitted_30d", labels)
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema)
            writer.write_table(table)
            keep = ~is_pop
            p_all.append(p[keep])
            y_all.append(label[keep])
            day_all.append(discharge[keep])
            population += int(is_pop.sum())
            written += n_chunk
        if writer is not None:
            writer.close()
    os.replace(tmp, path)
    p_cat, y_cat, d_cat = np.concatenate(p_all), np.concatenate(y_all), np.concatenate(day_all)
    recent = d_cat >= np.quantile(d_cat, 0.8)
    summary = DemoSummary(
        rows=written, labelled=len(y_cat), population=population,
        best_auc=round(auc(y_cat, p_cat), 4),
        best_auc_recent=round(auc(y_cat[recent], p_cat[recent]), 4),
        prevalence=round(float(y_cat.mean()), 4), path=str(path),
    )
    (out_dir / "_generator.json").write_text(json.dumps(summary.__dict__, indent=2))
    return summary
