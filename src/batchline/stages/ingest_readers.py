"""JSON lines and Parquet for ingest: batches of the declared columns, with their lines.

Each reader yields (batch, physical line of each row) and records in a
ReadReport every row it read, skipped (with its line and reason) or columns
it ignored, so that ingest can account for every row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchline import storage
from batchline.errors import DataError
from batchline.params import IngestParams
from batchline.stages.ingest_csv import RECORD_SHOWN
from batchline.stages.ingest_sources import ReadReport, Source, check_header, text_lines

Batches = Iterator[tuple[pa.RecordBatch, list[int]]]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"keys {twice} appear more than once in one object")
    return dict(pairs)


def _as_text(value: Any) -> str | None:
    """A JSON value as the text a CSV cell would hold, so both validate alike."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)  # int, float (inf and nan included: validation rejects them)


def jsonl_batches(src: Source, stream: pa.NativeFile, params: IngestParams,
                  report: ReadReport) -> Batches:
    """Rows of a JSON-lines file, parsed line by line so a bad line is quarantined alone."""
    names = list(params.columns)
    seen: set[str] = set()
    buffer: dict[str, list[str | None]] = {n: [] for n in names}
    lines: list[int] = []
    any_line = False
    for number, raw in text_lines(src, stream, params.encoding, params.max_record_bytes):
        if raw is not None and not raw.strip():
            continue
        any_line = True
        report.rows_read += 1
        if raw is None:
            report.skip(number, f"line is longer than max_record_bytes="
                        f"{params.max_record_bytes} bytes; raise "
                        "stages.ingest.params.max_record_bytes to read it", None)
            continue
        try:
            obj = json.loads(raw, object_pairs_hook=_unique_keys)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:
            report.skip(number, f"malformed JSON: {exc}",
                        raw[:RECORD_SHOWN].decode("utf-8", "replace"))
            continue
        seen.update(obj)
        for n in names:
            buffer[n].append(_as_text(obj.get(n)))
        lines.append(number)
        if len(lines) >= params.batch_rows:
            yield _flush(buffer, names), lines
            lines = []
    if not any_line:
        raise DataError(f"{src.uri}: the file is empty; expected one JSON object per line")
    missing = [n for n in names if n not in seen]
    if seen and missing:
        raise DataError(f"{src.uri}: missing columns {missing}; no object has them. Fix the "
                        "file or stages.ingest.params.columns")
    report.ignored = sorted(seen - set(names))
    if lines:
        yield _flush(buffer, names), lines


def _flush(buffer: dict[str, list[str | None]], names: list[str]) -> pa.RecordBatch:
    batch = pa.RecordBatch.from_arrays([pa.array(buffer[n], pa.string()) for n in names], names)
    for n in names:
        buffer[n] = []
    return batch


def parquet_batches(src: Source, params: IngestParams, report: ReadReport) -> Batches:
    """Rows of a Parquet file in batches; a row's 'line' is its row number from 1."""
    fs, path = storage.resolve(src.uri)
    try:
        parquet = pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{src.uri}: not a readable Parquet file ({exc}); check "
                        "stages.ingest.params.format") from None
    check_header(src.uri, parquet.schema_arrow.names, params.columns, report)
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=params.batch_rows,
                                          columns=list(params.columns)):
            report.rows_read += batch.num_rows
            yield batch, list(range(row + 1, row + 1 + batch.num_rows))
            row += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{src.uri}: Parquet data after row {row} is unreadable ({exc})") \
            from None
