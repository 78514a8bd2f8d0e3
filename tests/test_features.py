from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from conftest import SPEC

from batchline.errors import SpecError
from batchline.params import FeaturesParams
from batchline.spec import load_spec
from batchline.stages.features import connect, feature_reader


def _encounters() -> pa.Table:
    d = dt.date
    rows = [  # patient 1: three stays, the third 400 days after the first
        (1, 1, d(2023, 1, 1), d(2023, 1, 5)),
        (2, 1, d(2023, 2, 1), d(2023, 2, 3)),
        (3, 1, d(2024, 2, 5), d(2024, 2, 15)),
        (4, 2, d(2023, 6, 1), d(2023, 6, 2)),
    ]
    cols = list(zip(*rows, strict=True))
    n = len(rows)
    return pa.table({
        "encounter_id": pa.array(cols[0], pa.int64()), "patient_id": pa.array(cols[1], pa.int64()),
        "hospital_id": ["H1"] * n, "admit_date": pa.array(cols[2], pa.date32()),
        "discharge_date": pa.array(cols[3], pa.date32()), "age": [70] * n, "sex": ["F"] * n,
        "diagnosis_group": ["copd"] * n, "hemoglobin": [12.0] * n, "creatinine": [1.0] * n,
        "sodium": [139.0] * n, "insurance": ["medicare"] * n, "prior_admissions_5y": [0] * n,
        "readmitted_30d": pa.array([0, 1, None, 0], pa.int64()),
    })


def _run(sql: str | None = None) -> pa.Table:
    spec_params = dict(load_spec(SPEC).stages["features"].params)
    if sql is not None:
        spec_params["sql"] = sql
    params = FeaturesParams(**spec_params)
    con = connect(params)
    return feature_reader(con, _encounters(), params).read_all()


def test_history_windows() -> None:
    table = _run().to_pydict()
    assert table["encounter_id"] == [1, 2, 3, 4]
    # The third stay of patient 1 is 400 days after the first: only stay 2
    # (369 days earlier) is outside, stay 1 too: none within 365 days.
    assert table["prior_admissions_365d"] == [0, 1, 0, 0]
    assert table["days_since_last_discharge"] == [9999, 27, 367, 9999]
    assert table["length_of_stay"] == [4, 2, 10, 1]
    assert table["mean_los_365d"] == [0, 4, 0, 0]
    assert table["los_trend"] == [0, -2, 0, 0]
    assert table["female"] == [1, 1, 1, 1]


def test_bad_sql_is_a_spec_error_naming_the_field() -> None:
    with pytest.raises(SpecError, match="stages.features.params.sql"):
        _run("SELECT no_such_column, encounter_id FROM encounters")


def test_sql_cannot_read_files() -> None:
    with pytest.raises(SpecError, match="(?i)external access|permission"):
        _run("SELECT *, 1 AS encounter_id FROM read_csv('/etc/passwd')")
