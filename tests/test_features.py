from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from conftest import SPEC

from batchline.errors import DataError, SpecError
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


def _run_params(**params: object) -> pa.Table:
    p = FeaturesParams(**params)  # type: ignore[arg-type]
    return feature_reader(connect(p), _encounters(), p).read_all()


@pytest.mark.parametrize("sql", [
    "SELECT * FROM encounters; SET memory_limit='100GB'; SET threads=64",
    # closing the wrapper's sub-select and opening a new one
    "SELECT * FROM encounters) AS x; SET memory_limit='100GB'; SELECT * FROM (SELECT 1",
    "SET threads=64",
    "PRAGMA version",
])
def test_feature_sql_is_exactly_one_select(sql: str) -> None:
    with pytest.raises(SpecError, match=r"stages.features.params.sql: (must be|not valid)"):
        _run_params(sql=sql, order_by="encounter_id")


def test_configuration_is_locked_after_limits_are_set() -> None:
    params = FeaturesParams(sql="SELECT encounter_id FROM input", order_by="encounter_id",
                            memory_limit="300MB")
    con = connect(params)
    feature_reader(con, _encounters(), params).read_all()
    with pytest.raises(Exception, match="configuration has been locked"):
        con.execute("SET memory_limit='100GB'")
    assert con.execute("SELECT current_setting('threads')").fetchall() == [(2,)]


def test_input_name_alias_and_trailing_comment() -> None:
    # default name `input`, the dataset's own name `encounters`, and a chosen name
    assert _run_params(sql="SELECT encounter_id FROM input -- all of them",
                       order_by="encounter_id").num_rows == 4
    joined = _run_params(sql="SELECT i.encounter_id FROM input i JOIN encounters e USING "
                             "(encounter_id)", order_by="encounter_id")
    assert joined.num_rows == 4
    assert _run_params(sql="SELECT encounter_id FROM stays;", table="stays",
                       order_by=["encounter_id"]).num_rows == 4


def test_without_order_by_rows_are_ordered_by_all_columns() -> None:
    table = _run_params(sql="SELECT patient_id, encounter_id FROM input ORDER BY random()")
    assert table.to_pydict() == {"patient_id": [1, 1, 1, 2], "encounter_id": [1, 2, 3, 4]}


def test_data_that_does_not_fit_the_sql_is_a_data_error() -> None:
    with pytest.raises(DataError, match="does not fit the feature SQL"):
        _run_params(sql="SELECT encounter_id, CAST(sex AS INTEGER) AS s FROM input",
                    order_by="encounter_id")
