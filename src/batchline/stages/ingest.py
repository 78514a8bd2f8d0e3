"""ingest: raw CSV, JSON lines or Parquet to typed Parquet against a declared schema.

Every file is streamed in record batches, so memory stays bounded whatever the
input size. Values are first read as text and then cast column by column; a
row whose value does not parse goes to the `quarantine` dataset with its file,
line and reason instead of failing the stage. If more than
`max_bad_fraction` of the rows are bad, or a file is unusable as a whole
(missing columns, not UTF-8, empty), the stage raises DataError (exit 2) and
commits nothing.
"""

from __future__ import annotations

import bisect
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchline import storage
from batchline.errors import DataError
from batchline.params import IngestParams
from batchline.task import StageTask

log = logging.getLogger(__name__)

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(),
    "date": pa.date32(), "timestamp": pa.timestamp("us"),
}
_PATTERNS = {
    "int64": r"^\s*[-+]?[0-9]+\s*$",
    "float64": r"^\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$",
    "bool": r"^(?i)(true|false|1|0)$",
}
EXTENSIONS = {"csv": (".csv",), "jsonl": (".jsonl", ".json", ".ndjson"), "parquet": (".parquet",)}
QUARANTINE_SCHEMA = pa.schema([("source_file", pa.string()), ("line", pa.int64()),
                               ("reason", pa.string()), ("record", pa.string())])
MAX_REASONS_SHOWN = 5
# pyarrow's streaming CSV reader reads up to 32 blocks ahead of the parser on
# its I/O thread, so its memory is about 32 x the block size: 2 MiB keeps that
# near 64 MB (8 MiB blocks held 290 MB on a 450 MB file).
CSV_BLOCK_BYTES = 2 << 20


def declared_schema(params: IngestParams) -> pa.Schema:
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in params.columns.items()])


@dataclass
class Tally:
    """What ingest saw, for the success record and the bad-fraction check."""

    rows: int = 0
    good: int = 0
    bad: int = 0
    files: int = 0
    reasons: list[str] = field(default_factory=list)


def _all_false(n: int) -> pa.Array:
    return pc.is_valid(pa.nulls(n))


def _cast_column(values: pa.Array, kind: str) -> tuple[pa.Array, pa.Array]:
    """Cast a text column; returns (typed values, mask of values that did not parse)."""
    target = ARROW_TYPES[kind]
    if kind == "string":
        return values, _all_false(len(values))
    if kind in ("date", "timestamp"):
        fmt = "%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S"
        parsed = pc.strptime(pc.utf8_trim_whitespace(values), format=fmt, unit="us",
                             error_is_null=True)
        if kind == "timestamp":
            alt = pc.strptime(pc.utf8_trim_whitespace(values), format="%Y-%m-%d %H:%M:%S",
                              unit="us", error_is_null=True)
            parsed = pc.coalesce(parsed, alt)
        bad = pc.and_(pc.is_valid(values), pc.is_null(parsed))
        return parsed.cast(target), bad
    try:
        return pc.cast(pc.utf8_trim_whitespace(values), target), _all_false(len(values))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.match_substring_regex(values, _PATTERNS[kind])
        bad = pc.and_(pc.is_valid(values), pc.invert(ok))
        cleaned = pc.if_else(bad, pa.scalar(None, pa.string()), values)
        if kind == "bool":
            lowered = pc.utf8_lower(cleaned)
            typed = pc.is_in(lowered, pa.array(["true", "1"]))
            return pc.if_else(pc.is_null(cleaned), pa.scalar(None, pa.bool_()), typed), bad
        return pc.cast(pc.utf8_trim_whitespace(cleaned), target), bad


def validate_batch(batch: pa.RecordBatch, params: IngestParams,
                   ) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Type one batch of text columns; returns (good rows, [(row index, reason)])."""
    schema = declared_schema(params)
    columns: list[pa.Array] = []
    bad_any = _all_false(batch.num_rows)
    reasons: dict[int, str] = {}
    required = set(params.required)
    for name, kind in params.columns.items():
        values = batch.column(name)
        if values.type != pa.string():
            values = values.cast(pa.string())
        # Empty text means "missing", whatever the type.
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        typed, bad = _cast_column(values, kind)
        if name in required:
            missing = pc.is_null(values)
            for i in pc.indices_nonzero(missing).to_pylist():
                reasons.setdefault(i, f"column {name!r}: required value is empty")
            bad = pc.or_(bad, missing)
        if pc.any(bad).as_py():
            # Only the bad rows become Python objects: a whole column would cost
            # ~10x its Arrow size in memory that Python's allocator keeps.
            where = pc.indices_nonzero(bad)
            for i, text in zip(where.to_pylist(), values.take(where).to_pylist(), strict=True):
                reasons.setdefault(i, f"column {name!r}: {text!r} is not a valid {kind}")
            bad_any = pc.or_(bad_any, bad)
        columns.append(typed)
    table = pa.Table.from_arrays(columns, schema=schema)
    if reasons:
        table = table.filter(pc.invert(bad_any))
    return table, sorted(reasons.items())


def list_sources(source: str, fmt: str) -> list[str]:
    """The data files a source URI names: the file itself, or a folder's files."""
    fs, path = storage.resolve(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"source {source} does not exist; check stages.ingest.params.source")
    if info.type == pafs.FileType.File:
        return [source]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                   and i.base_name.endswith(EXTENSIONS[fmt])
                   and not i.base_name.startswith((".", "_")))
    if not names:
        raise DataError(f"source folder {source} has no {fmt} files ({', '.join(EXTENSIONS[fmt])})")
    return [storage.join(source, n) for n in names]


def _csv_batches(uri: str, params: IngestParams, skipped: list[tuple[int, str]]
                 ) -> Iterator[pa.RecordBatch]:
    fs, path = storage.resolve(uri)

    def on_invalid(row: Any) -> str:
        skipped.append((row.number or 0, f"expected {row.expected_columns} columns, got "
                        f"{row.actual_columns}: {row.text[:200]!r}"))
        return "skip"

    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in params.columns},
        strings_can_be_null=False, quoted_strings_can_be_null=False)
    # use_threads=False makes pyarrow report physical line numbers of bad rows.
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid)
    stream = fs.open_input_stream(path)
    try:
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise DataError(_explain_arrow_error(uri, exc)) from None
    _check_columns(uri, reader.schema.names, params)
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise DataError(_explain_arrow_error(uri, exc)) from None
    finally:
        stream.close()


def _jsonl_batches(uri: str, params: IngestParams, skipped: list[tuple[int, str]]
                   ) -> Iterator[pa.RecordBatch]:
    # Parsed line by line so that one malformed line is quarantined with its
    # number instead of failing the whole block, as pyarrow's reader would.
    # Streamed: only one batch of rows is held, whatever the file's size.
    fs, path = storage.resolve(uri)
    names = list(params.columns)
    seen_columns: set[str] = set()
    buffer: dict[str, list[str | None]] = {n: [] for n in names}
    any_line = False
    with fs.open_input_stream(path) as stream:
        for number, line in _numbered_lines(uri, stream):
            if not line.strip():
                continue
            any_line = True
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                skipped.append((number, f"malformed JSON: {exc}"))
                continue
            seen_columns.update(obj)
            for n in names:
                value = obj.get(n)
                buffer[n].append(None if value is None else str(value).lower()
                                 if isinstance(value, bool) else str(value))
            if len(buffer[names[0]]) >= params.batch_rows:
                yield _flush(buffer, names)
    if not any_line:
        raise DataError(f"{uri}: the file is empty; expected one JSON object per line")
    missing = [n for n in names if n not in seen_columns]
    if missing:
        raise DataError(f"{uri}: missing columns {missing}; declared in "
                        "stages.ingest.params.columns")
    if buffer[names[0]]:
        yield _flush(buffer, names)


def _numbered_lines(uri: str, stream: pa.NativeFile) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 stream, read in 1 MiB chunks.

    Each line is decoded alone, so a bad byte is reported at its own line.
    """
    for number, raw in enumerate(io.BufferedReader(stream, 1 << 20), start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{uri}: line {number} is not UTF-8 text (invalid byte at column "
                            f"{exc.start + 1}); re-export the file as UTF-8") from None


def _flush(buffer: dict[str, list[str | None]], names: list[str]) -> pa.RecordBatch:
    batch = pa.RecordBatch.from_arrays([pa.array(buffer[n], pa.string()) for n in names], names)
    for n in names:
        buffer[n] = []
    return batch


def _parquet_batches(uri: str, params: IngestParams, skipped: list[tuple[int, str]]
                     ) -> Iterator[pa.RecordBatch]:
    fs, path = storage.resolve(uri)
    try:
        parquet = pq.ParquetFile(fs.open_input_file(path))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{uri}: not a readable Parquet file ({exc})") from None
    _check_columns(uri, parquet.schema_arrow.names, params)
    yield from parquet.iter_batches(batch_size=params.batch_rows, columns=list(params.columns))


def _check_columns(uri: str, present: list[str], params: IngestParams) -> None:
    missing = [c for c in params.columns if c not in present]
    if missing:
        raise DataError(f"{uri}: missing columns {missing}; the file has {present}. Fix the "
                        "file or stages.ingest.params.columns")


def _explain_arrow_error(uri: str, exc: pa.ArrowInvalid) -> str:
    text = str(exc)
    if "Empty CSV file" in text:
        return f"{uri}: the file is empty; expected a header line and rows"
    if "invalid UTF8" in text:
        return f"{uri}: not UTF-8 text ({text}); re-export the file as UTF-8"
    return f"{uri}: cannot be parsed as {text}"


READERS = {"csv": _csv_batches, "jsonl": _jsonl_batches, "parquet": _parquet_batches}


def _line_of(row: int, skipped_lines: list[int], header_lines: int) -> int:
    """Physical line of the `row`-th parsed row, given the lines the parser skipped."""
    line = row + 1 + header_lines
    while True:
        shifted = row + 1 + header_lines + bisect.bisect_right(skipped_lines, line)
        if shifted == line:
            return line
        line = shifted


class _RowGroup:
    """Gathers the small batches the CSV reader yields into row groups of `rows`."""

    def __init__(self, out: storage.DatasetWriter, rows: int) -> None:
        self.out = out
        self.rows = rows
        self.tables: list[pa.Table] = []
        self.count = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.count += table.num_rows
        if self.count >= self.rows:
            self.flush()

    def flush(self) -> None:
        if self.tables:
            self.out.write(pa.concat_tables(self.tables))
        self.tables, self.count = [], 0


def ingest_file(uri: str, params: IngestParams, out: storage.DatasetWriter,
                quarantine: storage.DatasetWriter, tally: Tally) -> None:
    """Stream one source file into `out`, sending bad rows to `quarantine`."""
    skipped: list[tuple[int, str]] = []
    row_offset = 0
    rows_before = tally.rows
    header = 1 if params.format == "csv" else 0
    pending = _RowGroup(out, params.batch_rows)
    for batch in READERS[params.format](uri, params, skipped):
        good, bad = validate_batch(batch, params)
        pending.add(good)
        if bad:
            lines = sorted(n for n, _ in skipped)
            raw = batch.take(pa.array([i for i, _ in bad], pa.int64())).to_pylist()
            quarantine.write(pa.table({
                "source_file": [uri] * len(bad),
                "line": [_line_of(row_offset + i, lines, header) for i, _ in bad],
                "reason": [reason for _, reason in bad],
                "record": [json.dumps(record, default=str) for record in raw],
            }, schema=QUARANTINE_SCHEMA))
            tally.reasons.extend(f"{uri}: {r}" for _, r in bad[:MAX_REASONS_SHOWN])
        tally.rows += batch.num_rows
        tally.good += good.num_rows
        tally.bad += len(bad)
        row_offset += batch.num_rows
    pending.flush()
    if skipped:
        quarantine.write(pa.table({
            "source_file": [uri] * len(skipped), "line": [n for n, _ in skipped],
            "reason": [r for _, r in skipped], "record": [None] * len(skipped),
        }, schema=QUARANTINE_SCHEMA))
        tally.reasons.extend(f"{uri}:{n}: {r}" for n, r in skipped[:MAX_REASONS_SHOWN])
        tally.rows += len(skipped)
        tally.bad += len(skipped)
    if tally.rows == rows_before:
        raise DataError(f"{uri}: the file has a header but no rows")
    tally.files += 1


def _source_meta(source: str) -> dict[str, Any]:
    """Metadata a data producer left beside the source (`_generator.json`), if any."""
    fs, path = storage.resolve(source)
    folder = path if fs.get_file_info(path).type == pafs.FileType.Directory \
        else os.path.dirname(path)
    try:
        with fs.open_input_stream(f"{folder}/_generator.json") as stream:
            meta: dict[str, Any] = json.loads(stream.read())
            return meta
    except (FileNotFoundError, OSError, ValueError):
        return {}


def run(task: StageTask) -> dict[str, Any]:
    """Ingest every source file; commit `encounters` and `quarantine` or nothing."""
    params = IngestParams(**task.params)
    sources = list_sources(params.source, params.format)
    tally = Tally()
    schema = declared_schema(params)
    with task.writer("encounters", schema) as out, \
            task.writer("quarantine", QUARANTINE_SCHEMA) as quarantine:
        for uri in sources:
            log.info("ingest: reading %s", uri)
            ingest_file(uri, params, out, quarantine, tally)
        fraction = tally.bad / tally.rows if tally.rows else 1.0
        if fraction > params.max_bad_fraction:
            shown = "\n  ".join(tally.reasons[:MAX_REASONS_SHOWN])
            raise DataError(
                f"{tally.bad} of {tally.rows} rows ({fraction:.2%}) are malformed, more than "
                f"stages.ingest.params.max_bad_fraction={params.max_bad_fraction}; first ones:\n"
                f"  {shown}\nFix the source or raise max_bad_fraction.")
        source_meta = _source_meta(params.source)
        metrics = {"rows_in": tally.rows, "rows_bad": tally.bad, "files": tally.files,
                   "source_meta": source_meta}
        if "best_auc_recent" in source_meta:  # the demo generator's ceiling, for the summary
            metrics["generator_best_auc"] = source_meta["best_auc_recent"]
        quarantine.commit({"rows": tally.bad})
        record = out.commit(metrics)
    return {"rows": record.rows, "rows_bad": tally.bad}
