"""Pure pieces of train: splits, label checks, feature selection, LightGBM names."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from conftest import SPEC

from batchline.errors import DataError, SpecError
from batchline.params import GroupSplit, RandomSplit, TimeSplit, TrainParams
from batchline.spec import load_spec
from batchline.stages.labels import check_label_type, code_labels
from batchline.stages.matrix import plan_features
from batchline.stages.split import EARLY_STOPPING, FIT, VALID, assign_roles, group_codes
from batchline.stages.train import split_rows


def _dates(days: list[int]) -> pa.ChunkedArray:
    start = dt.date(2024, 1, 1)
    return pa.chunked_array([pa.array([start + dt.timedelta(d) for d in days], pa.date32())])


def test_time_split_keeps_ties_together_and_reports_cut_and_real_fraction() -> None:
    # 10 days, day 9 holds 40% of the rows: asking for 0.2 cannot split day 9,
    # so the nearest achievable share is taken (0.4), never a tie straddling.
    days = [d for d in range(9) for _ in range(6)] + [9] * 36
    params = TrainParams(label="y", split={"kind": "time", "column": "t", "fraction": 0.2},
                         early_stopping_fraction=0.1)
    roles = split_rows(params, _dates(days), len(days))
    report = roles.report
    assert report["cut"] == "2024-01-10" and report["fractions"]["valid"] == 0.4
    assert report["fraction_requested"] == 0.2 and report["kind"] == "time"
    days_arr = np.array(days)
    assert set(days_arr[roles.roles == VALID]) == {9}
    # The early-stopping slice is the most recent part of the training side.
    assert days_arr[roles.roles == EARLY_STOPPING].min() > days_arr[roles.roles == FIT].max()
    assert report["early_stopping_cut"] == "2024-01-09"


def test_time_split_with_explicit_cutoff() -> None:
    days = list(range(100))
    params = TrainParams(label="y", split={"kind": "time", "column": "t",
                                           "cutoff": "2024-03-01"})
    roles = split_rows(params, _dates(days), 100)
    assert roles.count(VALID) == 40  # 2024-03-01 is day 60
    assert roles.report["cut"] == "2024-03-01"
    with pytest.raises(DataError, match="split.cutoff"):
        split_rows(TrainParams(label="y", split={"kind": "time", "column": "t",
                                                 "cutoff": "2030-01-01"}), _dates(days), 100)
    with pytest.raises(SpecError, match="split.cutoff"):
        split_rows(TrainParams(label="y", split={"kind": "time", "column": "t",
                                                 "cutoff": "soon"}), _dates(days), 100)


def test_random_split_is_seeded_and_exact() -> None:
    spec = RandomSplit(fraction=0.25, seed=3)
    a = assign_roles(spec, np.arange(1000), 0.2, 3)
    b = assign_roles(spec, np.arange(1000), 0.2, 3)
    assert (a.roles == b.roles).all()
    assert a.count(VALID) == 250 and a.count(EARLY_STOPPING) == 150
    assert not (assign_roles(RandomSplit(fraction=0.25, seed=4), np.arange(1000), 0.2, 4).roles
                == a.roles).all()


def test_group_split_puts_each_group_on_one_side() -> None:
    rng = np.random.default_rng(0)
    patients = pa.chunked_array([pa.array(rng.integers(0, 300, 3000))])
    roles = assign_roles(GroupSplit(column="p", fraction=0.2), group_codes(patients), 0.1, 7)
    keys = patients.to_numpy()
    sides = [set(keys[roles.roles == r]) for r in (FIT, EARLY_STOPPING, VALID)]
    assert all(not (sides[i] & sides[j]) for i in range(3) for j in range(i + 1, 3))
    assert abs(roles.report["fractions"]["valid"] - 0.2) < 0.02
    assert roles.report["groups_held_out"] < roles.report["groups"]


def test_one_time_value_cannot_be_split() -> None:
    with pytest.raises(DataError, match="every row shares one value"):
        assign_roles(TimeSplit(column="t", fraction=0.2), np.zeros(500), 0.1, 7)


def test_label_checks_name_the_column_and_show_examples() -> None:
    with pytest.raises(DataError, match=r"label: column 'y' has type string, but objective "
                                        r"binary needs 0/1"):
        check_label_type("y", pa.string(), "binary")
    check_label_type("y", pa.string(), "multiclass")
    with pytest.raises(DataError, match=r"must hold only 0 and 1.*2 rows.*\[2.0, 5.0\]"):
        code_labels("y", pa.chunked_array([pa.array([0, 1, 2, 5, 1])]), "binary")
    with pytest.raises(DataError, match="NaN or infinite"):
        code_labels("y", pa.chunked_array([pa.array([1.0, float("nan")])]), "regression")
    labels = code_labels("y", pa.chunked_array([pa.array(["b", "a", "c", "a"])]), "multiclass")
    assert labels.classes == ["a", "b", "c"] and labels.y.tolist() == [1, 0, 2, 0]
    with pytest.raises(DataError, match="one class only"):
        code_labels("y", pa.chunked_array([pa.array(["a", "a"])]), "multiclass")


def test_text_columns_are_categorical_unless_excluded_with_warnings() -> None:
    schema = pa.schema([("id", pa.string()), ("city", pa.string()), ("ward", pa.string()),
                        ("age", pa.int64()), ("seen", pa.date32()), ("y", pa.int64())])
    plan = plan_features(schema, {"y", "id"}, ["ward"], ["id", "gone"])
    assert plan.features == ["city", "ward", "age"]
    assert plan.categorical == ["city", "ward"]
    text = " | ".join(plan.warnings)
    assert "'gone' is not a column" in text
    assert "'city' (text) is named in no list: used as a categorical" in text
    assert "'seen' of type date32[day] is not used" in text
    assert "'ward'" not in text and "'id'" not in text


def test_lightgbm_names_are_checked_against_lightgbm() -> None:
    ok = load_spec(SPEC, {"stages.train.params.lightgbm": {"lambda_l2": 1.0, "reg_alpha": 0.1}})
    assert ok.stages["train"].params["lightgbm"]["reg_alpha"] == 0.1
    with pytest.raises(SpecError, match=r"stages.train.params.lightgbm.*no parameter 'lamda_l2'"):
        load_spec(SPEC, {"stages.train.params.lightgbm": {"lamda_l2": 1.0}})
    with pytest.raises(SpecError, match=r"lightgbm.n_estimators: set stages.train.params."
                                        r"num_boost_round"):
        load_spec(SPEC, {"stages.train.params.lightgbm": {"n_estimators": 10}})


def test_train_needs_a_split() -> None:
    with pytest.raises(ValueError, match="hold out validation rows"):
        TrainParams(label="y")
