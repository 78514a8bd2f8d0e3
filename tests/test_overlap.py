"""overlap(): a producer on a helper thread, seen by the caller exactly as if iterated directly.

And the two stages that use it or changed for speed give the same bytes either way:
ingest with one core (no helper) and with two, features loading local Parquet
through DuckDB's reader and through pyarrow's scanner.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import eventually, ingest_task
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline import cpu, storage
from batchline.params import FeaturesParams
from batchline.stages import ingest
from batchline.stages.features import connect, feature_reader
from batchline.stages.overlap import overlap


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.BUDGET_ENV, "2")


class Boom(Exception):
    pass


def _produce(items: list[int], fail_at: int | None, seen: list[str]) -> Iterator[int]:
    for i, item in enumerate(items):
        if i == fail_at:
            raise Boom(f"at {i}")
        seen.append(threading.current_thread().name)
        yield item


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(), max_size=30), st.integers(1, 4),
       st.one_of(st.none(), st.integers(0, 30)))
def test_the_caller_sees_the_items_and_the_error_of_iterating_directly(
        items: list[int], depth: int, fail_at: int | None) -> None:
    direct: list[int] = []
    expected_error = None
    try:
        direct.extend(_produce(items, fail_at, []))
    except Boom as exc:
        expected_error = str(exc)
    got: list[int] = []
    seen: list[str] = []
    error = None
    try:
        got.extend(overlap(_produce(items, fail_at, seen), depth=depth, name="helper"))
    except Boom as exc:
        error = str(exc)
    assert (got, error) == (direct, expected_error)
    assert set(seen) <= {"helper"}  # produced on the helper, not the caller's thread


def test_with_one_core_the_items_are_produced_in_the_callers_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.BUDGET_ENV, "1")
    seen: list[str] = []
    assert list(overlap(_produce([1, 2, 3], None, seen), name="helper")) == [1, 2, 3]
    assert seen == [threading.current_thread().name] * 3


def test_a_caller_that_stops_early_stops_the_helper_and_closes_the_producer() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                produced.append(n)
                yield n
                n += 1
        finally:
            closed.set()

    items = overlap(endless(), depth=2)
    assert next(items) == 0
    items.close()  # what a SystemExit from SIGTERM does to the caller's loop
    eventually(closed.is_set, what="the producer's cleanup ran")
    assert len(produced) <= 1 + 2 + 1  # the one handed over, the queue, one in hand


def _defective_csv(path: Path) -> None:
    lines = ["id,when,value,name\n"]
    for i in range(120_000):  # several CSV blocks
        if i % 9_973 == 5:
            lines.append(f"{i},2024-02-30,1.0,bad date\n")
        elif i % 12_007 == 7:
            lines.append(f'{i},2024-01-02,"unclosed,x\n')
        else:
            lines.append(f"{i},2024-01-02,{i / 7:.3f},name {i}\n")
    path.write_text("".join(lines))


def test_ingest_commits_the_same_bytes_with_one_core_and_with_two(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "defects.csv"
    _defective_csv(src)
    columns = {"id": "int64", "when": "date", "value": "float64", "name": "string"}
    fingerprints: dict[str, Any] = {}
    for cores in ("1", "2"):
        monkeypatch.setenv(cpu.BUDGET_ENV, cores)
        task = ingest_task(tmp_path / f"store-{cores}", {
            "source": str(src), "format": "csv", "columns": columns, "max_bad_fraction": 0.5,
            "batch_rows": 50_000})
        result = ingest.run(task)
        fingerprints[cores] = (result, {
            name: [(f.rows, f.sha256) for f in storage.committed(uri).files]
            for name, uri in task.outputs.items()})
    assert fingerprints["1"] == fingerprints["2"]
    assert fingerprints["2"][0]["rows_bad"] >= 20  # the defects were met, in every block


def test_features_from_local_parquet_match_the_pyarrow_scanner_path(tmp_path: Path) -> None:
    encounters = pa.table({
        "encounter_id": pa.array(range(5_000), pa.int64()),
        "patient_id": pa.array([i % 700 for i in range(5_000)], pa.int64()),
        "admit_date": pa.array([18_000 + (i * 37) % 900 for i in range(5_000)], pa.date32()),
        "hospital": pa.array([f"h{i % 13}" if i % 50 else None for i in range(5_000)]),
        "lab": pa.array([i / 3 if i % 40 else None for i in range(5_000)], pa.float64()),
    })
    uri = str(tmp_path / "encounters")
    with storage.DatasetWriter(uri, storage.Stamp("r", "ingest", "k"), rows_per_file=2_000) as out:
        for batch in encounters.to_batches(1_500):
            out.write(batch)
        out.commit({})
    params = FeaturesParams(order_by=["encounter_id"], sql="""
        SELECT encounter_id, hospital, lab,
               count(*) OVER (PARTITION BY patient_id ORDER BY admit_date, encounter_id)
                 AS nth
        FROM encounters""")
    results = []
    for data in (storage.open_dataset(uri), encounters):  # local files; an in-memory table
        con = connect(params)
        try:
            results.append(feature_reader(con, data, params).read_all())
        finally:
            con.close()
    assert results[0].equals(results[1]) and results[0].num_rows == 5_000
    assert len(storage.committed(uri).files) == 3  # several files, read in their order
