"""Ingest's one-step cast of clean columns against the value-by-value checks.

`cast_whole` skips the null-text lookup, trimming and masks for an int64,
float64 or date column that Arrow's cast takes whole. It must never change
what is committed or quarantined: for any column text, any null texts and any
non_finite policy, validate_batch gives the same good rows and the same
reasons with the shortcut as with it turned off.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline.params import IngestParams
from batchline.stages import ingest_validate
from batchline.stages.ingest_validate import cast_whole, validate_batch

# Texts that matter to the three kinds: clean values, near misses, null texts,
# non-finite spellings, padding, control characters, out-of-range numbers.
TEXTS = ["0", "7", "-3", "+4", "007", "12345678901234567890", "9223372036854775807",
         "-9223372036854775808", "1.5", "-0.25", ".5", "5.", "1e3", "2E-2", "nan", "NaN",
         "inf", "-Infinity", " 8", "9 ", "\t1", "1\x0b", "\x001", "", "NA", "N/A", "NULL",
         "null", "-1", "x", "1,5", "2024-01-31", "2024-02-30", "2024-1-5", " 2024-01-01",
         "2024-01-01T00:00", "1999-12-31", "0001-01-01"]
NULL_TEXTS = [["", "NA", "N/A", "NULL", "null", "NaN"], [], ["-1"], ["nan", "NA"],
              ["2024-01-31"], ["0"], ["inf"]]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(kinds=st.lists(st.sampled_from(["int64", "float64", "date"]), min_size=1, max_size=3),
       columns=st.data(), null_values=st.sampled_from(NULL_TEXTS),
       non_finite=st.sampled_from(["quarantine", "null", "keep"]),
       required=st.booleans())
def test_the_one_step_cast_commits_and_quarantines_what_the_checks_do(
        kinds: list[str], columns: Any, null_values: list[str], non_finite: str,
        required: bool) -> None:
    n = columns.draw(st.integers(1, 12))
    # Mostly clean columns, so that the shortcut is taken often, not only refused.
    clean = {"int64": ["1", "22", "-5"], "float64": ["1.5", "2", "-0.5e1"],
             "date": ["2024-01-31", "2023-12-01"]}
    data = {}
    for i, kind in enumerate(kinds):
        pool = clean[kind] if columns.draw(st.booleans()) else TEXTS
        data[f"c{i}"] = pa.array(columns.draw(st.lists(st.sampled_from(pool), min_size=n,
                                                       max_size=n)), pa.string())
    batch = pa.RecordBatch.from_pydict(data)
    params = IngestParams(source="x.csv", columns={f"c{i}": k for i, k in enumerate(kinds)},
                          null_values=null_values, non_finite=non_finite,
                          required=["c0"] if required else [])
    with_shortcut = validate_batch(batch, params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_validate, "cast_whole", lambda *args: None)
        checked = validate_batch(batch, params)
    assert with_shortcut[1] == checked[1]
    assert with_shortcut[0].equals(checked[0])


def test_the_shortcut_is_taken_for_clean_columns_and_refused_otherwise() -> None:
    nulls = ("", "NA", "NaN")
    clean = pa.array(["1", "2"])
    assert cast_whole(clean, "int64", nulls) == pa.array([1, 2], pa.int64())
    assert cast_whole(pa.array(["1.5", "2"]), "float64", nulls) is not None
    assert cast_whole(pa.array(["2024-01-31"]), "date", nulls) is not None
    assert cast_whole(pa.array(["1", ""]), "int64", nulls) is None  # a null text
    assert cast_whole(pa.array(["1.5", "NaN"]), "float64", nulls) is None  # NaN: the checks
    assert cast_whole(clean, "int64", ("-1",)) is None  # a null text that is a number
    assert cast_whole(clean, "string", nulls) is None  # strings keep their null lookup


def test_an_integer_with_a_plus_sign_is_committed_not_a_failed_file() -> None:
    """Found by the property above: '+4' passed the integer pattern, then Arrow's cast
    refused it, and the whole file failed as 'cannot be typed' (exit 2)."""
    batch = pa.RecordBatch.from_pydict({"n": pa.array(["+4", "5", "x"])})
    good, bad = validate_batch(batch, IngestParams(source="x.csv", columns={"n": "int64"}))
    assert good.column("n").to_pylist() == [4, 5]
    assert bad == [(2, "column 'n': 'x' is not a valid int64")]
