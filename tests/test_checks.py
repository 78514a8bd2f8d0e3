"""Data-quality checks declared in the spec: each kind, streamed, spec errors, and end to end."""

from __future__ import annotations

import csv
import itertools
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from conftest import SPEC, ingest_task, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline import layout, storage
from batchline.demo_data import generate
from batchline.errors import SpecError
from batchline.manifest import RunManifest
from batchline.params import IngestParams
from batchline.spec import parse_spec
from batchline.stages import ingest
from batchline.stages.checks import CheckContext, CheckResult, Checks

AS_OF = date(2025, 1, 31)
NO_PREVIOUS = CheckContext(AS_OF, "a fixed day (test)", no_previous="no previous run (test)")
COLUMNS = {"id": "int64", "age": "int64", "sex": "string", "lab": "float64", "day": "date",
           "at": "timestamp"}


def _checks(spec: dict[str, Any], columns: dict[str, str] | None = None) -> Checks:
    params = IngestParams(source="x.csv", columns=columns or COLUMNS, checks=spec)
    assert params.checks is not None
    return Checks(params.checks)


def _judge(spec: dict[str, Any], data: dict[str, list[Any]],
           context: CheckContext = NO_PREVIOUS, cuts: list[int] | None = None,
           ) -> list[CheckResult]:
    """Feed `data` (split at `cuts` into row groups) through the checks of `spec`."""
    types = {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64(),
             "date": pa.date32(), "timestamp": pa.timestamp("us")}
    table = pa.table({name: pa.array(values, types[COLUMNS[name]])
                      for name, values in data.items()})
    checks = _checks(spec, {name: COLUMNS[name] for name in data})
    bounds = [0, *(cuts or []), table.num_rows]
    for start, end in itertools.pairwise(bounds):
        checks.observe(table.slice(start, end - start))
    return checks.results(context)


def _one(results: list[CheckResult], check: str) -> CheckResult:
    found = [r for r in results if r.check == check]
    assert len(found) == 1, results
    return found[0]


# -- each kind: pass, warn, fail ---------------------------------------------------------

def test_range_counts_values_outside_with_min_max_and_examples() -> None:
    ages = [40, -3, 212, None, 50, 130]
    failed = _one(_judge({"columns": {"age": {"range": [0, 120]}}}, {"age": ages}), "range")
    assert (failed.status, failed.column, failed.on_fail) == ("fail", "age", "fail")
    assert failed.expected == [0, 120]
    assert failed.observed == {"rows": 6, "values": 5, "outside": 3, "min": -3, "max": 212,
                               "examples": [-3, 212, 130]}
    assert failed.message.startswith("check failed: stages.ingest.params.checks.columns.age."
                                     "range [0, 120]: 3 of 5 values outside, min -3, max 212")
    warned = _one(_judge({"columns": {"age": {"range": [0, 120], "on_fail": "warn"}}},
                         {"age": ages}), "range")
    assert warned.status == "warn" and warned.message.startswith("check warned: ")
    passed = _one(_judge({"columns": {"age": {"range": [0, None]}}}, {"age": [0, 7, None]}),
                  "range")
    assert passed.status == "pass" and passed.observed["outside"] == 0


def test_range_of_dates_and_timestamps_takes_date_bounds() -> None:
    days = [date(2024, 5, 1), date(1900, 1, 1), None]
    result = _one(_judge({"columns": {"day": {"range": [date(2000, 1, 1), None]}}},
                         {"day": days}), "range")
    assert result.status == "fail" and result.observed["examples"] == ["1900-01-01"]
    assert result.expected == ["2000-01-01", None]
    stamps = [datetime(2024, 12, 31, 23, 0), datetime(2025, 1, 1, 0, 0, 1)]
    result = _one(_judge({"columns": {"at": {"range": [None, date(2025, 1, 1)]}}},
                         {"at": stamps}), "range")
    assert result.observed["outside"] == 1  # a second past midnight is after the day began
    assert result.observed["examples"] == ["2025-01-01T00:00:01"]


def test_allowed_counts_other_values_but_not_empty_ones() -> None:
    sexes = ["F", "M", "X", None, "f", "X", "M"]
    result = _one(_judge({"columns": {"sex": {"allowed": ["F", "M"]}}}, {"sex": sexes}),
                  "allowed")
    assert result.status == "fail"
    assert result.observed == {"rows": 7, "values": 6, "disallowed": 3, "examples": ["X", "f"]}
    assert "3 of 6 values not allowed; examples 'X', 'f'" in result.message
    ok = _one(_judge({"columns": {"sex": {"allowed": ["F", "M"], "on_fail": "warn"}}},
                     {"sex": ["F", None, "M"]}), "allowed")
    assert ok.status == "pass"


def test_max_null_fraction_is_judged_on_every_row() -> None:
    spec = {"columns": {"lab": {"max_null_fraction": 0.25, "on_fail": "warn"}}}
    passed = _one(_judge(spec, {"lab": [1.0, None, 2.0, 3.0]}), "max_null_fraction")
    assert passed.status == "pass" and passed.observed == {"rows": 4, "nulls": 1,
                                                           "fraction": 0.25}
    warned = _one(_judge(spec, {"lab": [1.0, None, None, 3.0]}), "max_null_fraction")
    assert warned.status == "warn" and "2 of 4 rows empty (50.00%)" in warned.message


def test_unique_counts_repeats_and_names_the_most_repeated_values() -> None:
    ids = [1, 2, 2, 3, 3, 3, None, None, 4]
    result = _one(_judge({"columns": {"id": {"unique": True}}}, {"id": ids}), "unique")
    assert result.status == "fail"
    # Nulls are not values, so they do not repeat; 3 repeats twice, 2 once.
    assert result.observed == {"values": 7, "duplicates": 3, "duplicated_values": 2,
                               "examples": [3, 2]}
    assert "examples 3 (3 rows), 2 (2 rows)" in result.message
    assert _one(_judge({"columns": {"id": {"unique": True}}}, {"id": [1, 2, None, None]}),
                "unique").status == "pass"


def test_freshness_is_the_newest_date_against_the_runs_day() -> None:
    days = [date(2025, 1, 2), date(2025, 1, 20), None]
    stale = _one(_judge({"columns": {"day": {"max_age_days": 10}}}, {"day": days}),
                 "max_age_days")
    assert stale.status == "fail"
    assert stale.observed == {"newest": "2025-01-20", "as_of": "2025-01-31",
                              "as_of_from": "a fixed day (test)", "age_days": 11}
    fresh = _one(_judge({"columns": {"day": {"max_age_days": 11}}}, {"day": days}),
                 "max_age_days")
    assert fresh.status == "pass"
    stamps = {"at": [datetime(2025, 1, 30, 23, 59)]}
    assert _one(_judge({"columns": {"at": {"max_age_days": 1}}}, stamps),
                "max_age_days").observed["age_days"] == 1
    empty = _one(_judge({"columns": {"day": {"max_age_days": 10, "on_fail": "warn"}}},
                        {"day": [None, None]}), "max_age_days")
    assert empty.status == "warn" and "no dates at all" in empty.message


def test_row_bounds_and_the_ratio_to_the_previous_run() -> None:
    spec = {"rows": [{"min": 3, "max": 10}, {"vs_previous": [0.5, 2.0], "on_fail": "warn"}]}
    data = {"id": [1, 2, 3, 4]}
    results = _judge(spec, data)
    assert _one(results, "rows").status == "pass"
    skipped = _one(results, "vs_previous")
    assert skipped.status == "skipped" and "no previous run (test)" in skipped.message
    assert skipped.column is None
    before = CheckContext(AS_OF, "test", previous_run="run-a", previous_rows=10)
    results = _judge(spec, data, before)
    ratio = _one(results, "vs_previous")
    assert ratio.status == "warn"
    assert ratio.observed == {"rows": 4, "previous_run": "run-a", "previous_rows": 10,
                              "ratio": 0.4}
    too_few = _one(_judge({"rows": {"min": 5}}, data), "rows")
    assert too_few.status == "fail" and too_few.observed == {"rows": 4}
    assert too_few.message.startswith("check failed: stages.ingest.params.checks.rows "
                                      "[min 5, max -]: 4 rows committed")


def test_every_result_has_the_fields_a_report_reads() -> None:
    results = _judge({"columns": {"age": {"range": [0, 1]}, "sex": {"allowed": ["F"]}},
                      "rows": {"min": 1}}, {"age": [0, 5], "sex": ["F", "M"]})
    for result in results:
        record = result.to_json()
        assert set(record) == {"check", "column", "on_fail", "status", "expected",
                               "observed", "message"}
        json.dumps(record)  # plain JSON, dates as text


# -- streaming: many row groups give what one gives -------------------------------------

SPEC_ALL = {"columns": {"age": [{"range": [0, 50]}, {"max_null_fraction": 0.1},
                                {"unique": True}],
                        "sex": {"allowed": ["F", "M"]},
                        "day": {"max_age_days": 30, "range": [date(2024, 1, 10), None]}},
            "rows": {"min": 5}}


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.integers(-20, 80)),
                               st.sampled_from(["F", "M", "X", "q", None]),
                               st.one_of(st.none(), st.dates(date(2024, 1, 1),
                                                             date(2025, 1, 31)))),
                     min_size=1, max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=6))
def test_streaming_in_row_groups_gives_the_results_of_one_group(
        rows: list[tuple[int | None, str | None, date | None]], cuts: list[int]) -> None:
    data = {"age": [r[0] for r in rows], "sex": [r[1] for r in rows],
            "day": [r[2] for r in rows]}
    cuts = sorted({c for c in cuts if 0 < c < len(rows)})
    whole = [r.to_json() for r in _judge(SPEC_ALL, data)]
    assert [r.to_json() for r in _judge(SPEC_ALL, data, cuts=cuts)] == whole
    by_check = {(r["check"], r["column"]): r for r in whole}
    ages = [a for a in data["age"] if a is not None]
    assert by_check["range", "age"]["observed"]["outside"] == sum(not 0 <= a <= 50
                                                                  for a in ages)
    assert by_check["unique", "age"]["observed"]["duplicates"] == len(ages) - len(set(ages))


# -- the spec ----------------------------------------------------------------------------

def _spec_with(checks: Any) -> dict[str, Any]:
    data = yaml.safe_load(SPEC.read_text())
    data["stages"]["ingest"]["params"]["checks"] = checks
    return data


@pytest.mark.parametrize(("checks", "expected"), [
    ({"columns": {"weight": {"range": [0, 1]}}},
     "checks.columns.weight: column 'weight' is not declared in columns"),
    ({"columns": {"sex": {"range": [0, 1]}}},
     "checks.columns.sex.range: column 'sex' is string; a range applies to numbers"),
    ({"columns": {"hemoglobin": {"max_age_days": 3}}},
     "checks.columns.hemoglobin.max_age_days: column 'hemoglobin' is float64; max_age_days "
     "applies to date and timestamp columns"),
    ({"columns": {"age": {"range": [120, 0]}}},
     "checks.columns.age.range: the minimum 120 is above the maximum 0"),
    ({"columns": {"admit_date": {"range": [0, 5]}}},
     "checks.columns.admit_date.range: column 'admit_date' is date; its bounds must be dates"),
    ({"columns": {"sex": {"allowed": [True, False]}}},
     "checks.columns.sex.allowed: column 'sex' is string; every allowed value must be text"),
    ({"columns": {"age": [{"unique": True}, {"max_null_fraction": 2}]}},
     "checks.columns.age.1.max_null_fraction: must be 1.0 or less, not 2"),
    ({"columns": {"age": {"on_fail": "warn"}}}, "checks.columns.age: declares no check"),
    ({"columns": {"age": {"range": [0, 1], "on_fail": "later"}}},
     "checks.columns.age.on_fail: 'later' is not allowed"),
    ({"rows": {"min": 10, "max": 5}}, "checks.rows.max: max (5) is below min (10)"),
    ({"rows": {"vs_previous": [2.0, 0.5]}}, "checks.rows.vs_previous: [2.0, 0.5] must be ratios"),
])
def test_spec_errors_name_the_field(checks: Any, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec_with(checks), "spec.yaml")
    assert f"stages.ingest.params.{expected}" in str(caught.value)


def test_validate_exits_2_on_a_bad_check_and_passes_the_shipped_specs(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_with({"columns": {"sex": {"range": [0, 1]},
                                                           "age": {"unique": "yes please"}}})))
    result = run_cli("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert "stages.ingest.params.checks.columns.age.unique: must be true or false" \
        in result.stderr
    for shipped in ("readmission.yaml", "readmission_fleet.yaml"):
        assert run_cli("validate", str(SPEC.parent / shipped)).returncode == 0


def test_a_spec_without_checks_keeps_its_params_and_cache_key() -> None:
    params = IngestParams(source="x.csv", columns={"a": "int64"})
    assert "checks" not in params.model_dump(mode="json")
    with_checks = IngestParams(source="x.csv", columns={"a": "int64"},
                               checks={"columns": {"a": {"range": [0, 1]}}})
    assert IngestParams(**with_checks.model_dump(mode="json")) == with_checks


# -- the stage: quarantined rows are not counted -----------------------------------------

def test_quarantined_rows_are_not_seen_by_the_checks(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text("id,age\n1,40\n2,abc\n3,\n4,212\n")
    task = ingest_task(tmp_path / "store", {
        "source": str(src), "format": "csv", "columns": {"id": "int64", "age": "int64"},
        "max_bad_fraction": 0.5, "checks": {
            "columns": {"age": {"range": [0, 120], "max_null_fraction": 0.5,
                                "on_fail": "warn"}},
            "rows": {"min": 3}}})
    assert ingest.run(task) == {"rows": 3, "rows_bad": 1}
    metrics = storage.committed(task.outputs["encounters"]).metrics
    results = {r["check"]: r for r in metrics["checks"]}
    assert results["range"]["observed"]["rows"] == 3  # 'abc' was quarantined, not checked
    assert results["range"]["status"] == "warn" and results["range"]["observed"]["outside"] == 1
    assert results["max_null_fraction"]["observed"] == {"rows": 3, "nulls": 1,
                                                        "fraction": 0.333333}
    assert results["rows"]["status"] == "pass"
    assert results["max_null_fraction"]["status"] == "pass"
    assert metrics["checks_warned"] == 1 and metrics["checks_failed"] == 0
    assert any(w.startswith("check warned: stages.ingest.params.checks.columns.age.range")
               for w in metrics["warnings"])
    assert results["rows"]["observed"] == {"rows": 3}


# -- end to end through the CLI ----------------------------------------------------------

@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    out = tmp_path_factory.mktemp("checks-demo")
    generate(3_000, out, seed=11)
    with open(out / "encounters.csv", newline="") as handle:
        return list(csv.reader(handle))


def _csv(path: Path, rows: list[list[str]], changes: dict[tuple[int, str], str] | None = None,
         ) -> Path:
    header, body = rows[0], [list(r) for r in rows[1:]]
    for (row, column), value in (changes or {}).items():
        body[row][header.index(column)] = value
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    return path


def _run(root: Path, source: Path, run_id: str, *sets: str) -> Any:
    args = [f"--set=stages.ingest.params.source={source}"] + [f"--set={s}" for s in sets]
    return run_cli("run", str(SPEC), "--storage", str(root), "--run-id", run_id,
                   "--stages", "ingest", *args)


def _record(root: Path, run_id: str) -> storage.SuccessRecord | None:
    return storage.read_success(layout.output_uri(str(root), run_id, "ingest", "encounters"))


def test_failed_checks_exit_2_name_every_check_and_commit_nothing(
        tmp_path: Path, demo_rows: list[list[str]]) -> None:
    ids = demo_rows[42][0]
    source = _csv(tmp_path / "bad.csv", demo_rows, {
        (10, "age"): "212", (20, "age"): "-3", (30, "sex"): "X", (40, "encounter_id"): ids,
        (50, "insurance"): "veterans"})
    result = _run(tmp_path / "store", source, "bad")
    assert result.returncode == 2, result.stderr
    out = result.stderr
    assert "3 data-quality checks failed; nothing was committed" in out
    assert ("check failed: stages.ingest.params.checks.columns.age.range [0, 120]: 2 of 3,000 "
            "values outside, min -3, max 212; examples 212, -3") in out
    assert "columns.sex.allowed ['F', 'M']: 1 of 3,000 values not allowed; examples 'X'" in out
    assert f"columns.encounter_id.unique: 1 of 3,000 values repeat an earlier one (1 value " \
           f"repeated); examples {int(ids):,} (2 rows)" in out
    assert "insurance" not in out.split("nothing was committed")[1].split("last log")[0]
    run = layout.run_uri(str(tmp_path / "store"), "bad")
    assert all(storage.read_success(layout.output_uri(str(tmp_path / "store"), "bad",
                                                      "ingest", o)) is None
               for o in ("encounters", "quarantine"))
    assert not list(Path(run).rglob("*.parquet")) and not list(Path(run).rglob("_SUCCESS*"))


def test_a_warn_check_succeeds_and_is_recorded(tmp_path: Path,
                                               demo_rows: list[list[str]]) -> None:
    source = _csv(tmp_path / "new-payer.csv", demo_rows, {(50, "insurance"): "veterans"})
    result = _run(tmp_path / "store", source, "warned",
                  "stages.ingest.params.checks.columns.discharge_date="
                  "{max_age_days: 3, on_fail: warn}")
    assert result.returncode == 0, result.stderr
    record = _record(tmp_path / "store", "warned")
    assert record is not None
    assert record.metrics["checks_warned"] == 2 and record.metrics["checks_failed"] == 0
    # The demo's data end in 2025; "now" is the day the run was created, from its manifest.
    fresh = next(r for r in record.metrics["checks"] if r["check"] == "max_age_days")
    created = RunManifest.load(str(tmp_path / "store"), "warned").created_at
    assert fresh["status"] == "warn"
    assert fresh["observed"]["as_of"] == datetime.fromtimestamp(created, UTC).date().isoformat()
    assert fresh["observed"]["as_of_from"] == "the day run warned was created (UTC)"
    assert fresh["observed"]["newest"].startswith("2025-01")
    # Its verdict depends on the day, so the day is part of ingest's cache key: the same
    # unchanged source is judged again tomorrow instead of reusing today's verdict.
    manifest = RunManifest.load(str(tmp_path / "store"), "warned")
    assert manifest.stages["ingest"].key_parts["inputs"]["run_day"] == fresh["observed"]["as_of"]
    insurance = next(r for r in record.metrics["checks"] if r["column"] == "insurance")
    assert insurance["status"] == "warn" and insurance["on_fail"] == "warn"
    assert insurance["observed"]["examples"] == ["veterans"]
    assert all(r["status"] in ("pass", "skipped") for r in record.metrics["checks"]
               if r["column"] not in ("insurance", "discharge_date"))
    assert "checks_warned 2" in result.stdout
    assert "warning: ingest: check warned: stages.ingest.params.checks.columns.insurance." \
           "allowed" in result.stdout


def test_row_count_is_judged_against_the_previous_run_of_the_pipeline(
        tmp_path: Path, demo_rows: list[list[str]]) -> None:
    root = tmp_path / "store"
    strict = "stages.ingest.params.checks.rows=[{min: 100}, {vs_previous: [0.5, 2.0]}]"
    first = _run(root, _csv(tmp_path / "all.csv", demo_rows), "first", strict)
    assert first.returncode == 0, first.stderr
    record = _record(root, "first")
    assert record is not None
    ratio = next(r for r in record.metrics["checks"] if r["check"] == "vs_previous")
    assert ratio["status"] == "skipped"
    assert "no earlier run of pipeline 'readmission'" in ratio["message"]
    similar = _run(root, _csv(tmp_path / "most.csv", demo_rows[:2_001]), "second", strict)
    assert similar.returncode == 0, similar.stderr
    record = _record(root, "second")
    assert record is not None
    ratio = next(r for r in record.metrics["checks"] if r["check"] == "vs_previous")
    assert ratio["status"] == "pass"
    assert ratio["observed"] == {"rows": 2_000, "previous_run": "first",
                                 "previous_rows": 3_000, "ratio": 0.6667}
    # A later run of another pipeline under the same root is not this pipeline's history.
    other = _run(root, _csv(tmp_path / "other.csv", demo_rows[:501]), "other", "name=other")
    assert other.returncode == 0, other.stderr
    shrunk = _run(root, _csv(tmp_path / "few.csv", demo_rows[:801]), "third", strict)
    assert shrunk.returncode == 2, shrunk.stderr
    assert ("check failed: stages.ingest.params.checks.rows.1.vs_previous [0.5, 2] x the "
            "previous run: 800 rows, 0.4 x the 2,000 of the previous run second") \
        in shrunk.stderr
    assert _record(root, "third") is None
    # Without a freshness check the day stays out of the cache key.
    assert "run_day" not in RunManifest.load(str(root), "first").stages["ingest"].key_parts[
        "inputs"]
