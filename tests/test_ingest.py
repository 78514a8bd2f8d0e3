from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ingest_task

from batchline import storage
from batchline.errors import DataError
from batchline.stages import ingest
from batchline.task import StageTask

COLUMNS = {"id": "int64", "when": "date", "value": "float64", "name": "string", "flag": "bool"}
HEADER = "id,when,value,name,flag\n"
GOOD = "1,2024-01-02,1.5,ann,true\n2,2024-01-03,2.5,bob,0\n3,2024-02-01,,cy,false\n"


def _task(tmp_path: Path, source: Path, fmt: str = "csv", **params: object) -> StageTask:
    p = {"source": str(source), "format": fmt, "columns": COLUMNS, "required": ["id"],
         "max_bad_fraction": 0.5, **params}
    return ingest_task(tmp_path / "store", p)


def _nothing_committed(task: StageTask) -> bool:
    return all(storage.read_success(uri) is None for uri in task.outputs.values()) and not list(
        Path(task.storage_root).rglob("*.parquet"))


def _stage(task: StageTask) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchline.stage", "ingest", "--task",
                           task.task_uri], capture_output=True, text=True, check=False)


def test_good_csv_is_typed(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text(HEADER + GOOD)
    task = _task(tmp_path, src)
    summary = ingest.run(task)
    assert summary == {"rows": 3, "rows_bad": 0}
    table = storage.open_dataset(task.outputs["encounters"]).to_table()
    assert table.schema.field("when").type == pa.date32()
    assert table.column("value").to_pylist() == [1.5, 2.5, None]
    assert table.column("flag").to_pylist() == [True, False, False]
    assert storage.committed(task.outputs["quarantine"]).rows == 0


def test_malformed_rows_go_to_quarantine_with_file_line_reason(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text(HEADER + GOOD + "4,2024-13-40,1,dee,true\n5,2024-01-01,1,eve\n"
                   "x7,2024-01-01,1,fay,true\n,2024-01-01,1,gus,true\n8,2024-01-01,1,hal,true\n")
    task = _task(tmp_path, src)
    summary = ingest.run(task)
    assert summary == {"rows": 4, "rows_bad": 4}
    q = storage.open_dataset(task.outputs["quarantine"]).to_table().sort_by("line").to_pylist()
    assert [r["line"] for r in q] == [5, 6, 7, 8]
    assert all(r["source_file"] == str(src) for r in q)
    assert "'when'" in q[0]["reason"] and "2024-13-40" in q[0]["reason"]
    assert "expected 5 columns, got 4" in q[1]["reason"]
    assert "'id'" in q[2]["reason"] and "x7" in q[2]["reason"]
    assert "required" in q[3]["reason"]
    ids = storage.open_dataset(task.outputs["encounters"]).to_table().column("id").to_pylist()
    assert sorted(ids) == [1, 2, 3, 8]


def test_too_many_bad_rows_exit_2_and_commit_nothing(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text(HEADER + GOOD + "bad,2024-01-01,1,x,true\n" * 5)
    task = _task(tmp_path, src, max_bad_fraction=0.1)
    result = _stage(task)
    assert result.returncode == 2
    assert "5 of 8 rows" in result.stderr and "max_bad_fraction" in result.stderr
    assert str(src) in result.stderr
    assert _nothing_committed(task)


@pytest.mark.parametrize(("fmt", "content", "message"), [
    ("csv", b"", "empty"),
    ("csv", HEADER.encode(), "no rows"),
    ("csv", b"id,when,value,name\n1,2024-01-01,1,a\n", "missing columns ['flag']"),
    ("csv", HEADER.encode() + b"1,2024-01-01,1.0,caf\xe9,true\n", "not UTF-8"),
    ("jsonl", b"", "empty"),
    ("jsonl", b"\n  \n", "empty"),
    ("jsonl", b'{"id": 1}\n{"id": 2, "name": "caf\xe9"}\n',
     "line 2, byte offset 32: not UTF-8 text; it looks like cp1252"),
])
def test_unusable_input_exit_2_naming_file(tmp_path: Path, fmt: str, content: bytes,
                                           message: str) -> None:
    src = tmp_path / f"bad.{fmt}"
    src.write_bytes(content)
    task = _task(tmp_path, src, fmt=fmt)
    result = _stage(task)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(src) in result.stderr
    assert "Traceback" not in result.stderr
    assert _nothing_committed(task)


def test_missing_source_exit_2(tmp_path: Path) -> None:
    task = _task(tmp_path, tmp_path / "nowhere.csv")
    result = _stage(task)
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_folder_of_files_and_jsonl(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [{"id": 1, "when": "2024-01-01", "value": 1.0, "name": "a", "flag": True},
            {"id": 2, "when": "2024-01-02", "value": None, "name": "b", "flag": False}]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    (folder / "b.jsonl").write_text(json.dumps({**rows[0], "id": 3}) + "\n")
    (folder / "_generator.json").write_text("{}")
    task = _task(tmp_path, folder, fmt="jsonl")
    assert ingest.run(task) == {"rows": 3, "rows_bad": 1}
    q = storage.open_dataset(task.outputs["quarantine"]).to_table().to_pylist()
    assert q[0]["line"] == 3 and "malformed JSON" in q[0]["reason"]
    assert q[0]["source_file"].endswith("a.jsonl")


def test_jsonl_missing_column_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"id": 1, "when": "2024-01-01", "value": 1, "name": "a"}) + "\n")
    task = _task(tmp_path, src, fmt="jsonl")
    with pytest.raises(DataError, match=r"missing columns \['flag'\]"):
        ingest.run(task)
    assert _nothing_committed(task)


def test_large_csv_streams_into_row_groups_with_true_line_numbers(tmp_path: Path) -> None:
    """Many reader blocks: rows are gathered into row groups of at least batch_rows,
    and a bad row far into the file is reported at its physical line."""
    rows = 150_000  # about 5 MB: several of the CSV reader's blocks
    lines = [f"{i},2024-01-02,{i / 7:.3f},name-{i:06d},true\n" for i in range(rows)]
    lines[123_456] = "123456,2024-01-02,not-a-number,bad,true\n"
    src = tmp_path / "big.csv"
    src.write_text(HEADER + "".join(lines))
    assert src.stat().st_size > 2 * ingest.CSV_BLOCK_BYTES
    task = _task(tmp_path, src, batch_rows=100_000)
    assert ingest.run(task) == {"rows": rows - 1, "rows_bad": 1}
    files = storage.file_uris(task.outputs["encounters"])
    groups = [pq.ParquetFile(f).metadata.row_group(g).num_rows
              for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    assert sum(groups) == rows - 1
    assert all(n >= 100_000 for n in groups[:-1]) and len(groups) == 2
    bad = storage.open_dataset(task.outputs["quarantine"]).to_table().to_pylist()
    assert [(b["line"], "'not-a-number' is not a valid float64" in b["reason"]) for b in bad] \
        == [(123_456 + 2, True)]  # +1 for the header, +1 as lines count from 1


def test_large_jsonl_streams_in_batches(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    rows = [{"id": i, "when": "2024-01-01", "value": i, "name": f"n{i}", "flag": i % 2 == 0}
            for i in range(2_500)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")
    task = _task(tmp_path, src, fmt="jsonl", batch_rows=1_000)
    assert ingest.run(task) == {"rows": 2_500, "rows_bad": 1}
    table = storage.open_dataset(task.outputs["encounters"]).to_table()
    assert table.column("id").to_pylist() == list(range(2_500))
    bad = storage.open_dataset(task.outputs["quarantine"]).to_table().to_pylist()
    assert bad[0]["line"] == 2_501 and "not a JSON object" in bad[0]["reason"]


def test_parquet_source(tmp_path: Path) -> None:
    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2], "when": ["2024-01-01", "2024-01-02"],
                             "value": [1.0, 2.0], "name": ["a", "b"], "flag": [True, False],
                             "extra": [0, 0]}), src)
    task = _task(tmp_path, src, fmt="parquet")
    assert ingest.run(task)["rows"] == 2
    table = storage.open_dataset(task.outputs["encounters"]).to_table()
    assert table.column_names == list(COLUMNS)
    pq.write_table(pa.table({"id": [1]}), src)
    with pytest.raises(DataError, match="missing columns"):
        ingest.run(_task(tmp_path / "again", src, fmt="parquet"))


def test_infer_prints_a_columns_block_with_roles(tmp_path: Path) -> None:
    from batchline.infer import infer, to_yaml

    src = tmp_path / "a.csv"
    src.write_text("patient_id,admit,age,ward,label\n" + "".join(
        f"{i},2024-01-{i % 28 + 1:02d},{30 + i % 50},{'ABC'[i % 3]},{'' if i % 9 == 0 else i % 2}\n"
        for i in range(100)))
    text = to_yaml(infer(str(src)))
    for line in ("  patient_id: int64  # id", "  admit:      date  # date", "  age:        int64",
                 "  ward:       string  # category (3 values)",
                 "  label:      int64  # label candidate, 12 empty",
                 "required: [patient_id]"):
        assert line in text, text
    import yaml
    assert list(yaml.safe_load(text)["columns"]) == ["patient_id", "admit", "age", "ward",
                                                     "label"]
