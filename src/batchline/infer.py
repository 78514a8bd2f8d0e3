"""`batchline infer SOURCE`: a ready `columns:` block for ingest, read from a sample.

It reads the first rows of a source with ingest's own readers (so it sees the
same header, null values, encoding and quoting as the stage will) and, per
column, picks the narrowest type every sampled value parses as. It also says
which columns look like ids, dates, categories and labels, as YAML comments
the user checks before pasting the block into a spec.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchline.errors import DataError
from batchline.params import IngestParams
from batchline.stages import ingest_csv, ingest_readers
from batchline.stages.ingest_sources import (
    ReadReport,
    Source,
    list_sources,
    open_stream,
    text_lines,
)
from batchline.stages.ingest_validate import cast_column

# Tried narrowest first: a column of 0 and 1 is int64, not bool (labels are).
_TYPES = ("int64", "float64", "date", "timestamp", "bool")
_ID_NAME = re.compile(r"(^id$|_id$|^id_|[a-z]Id$|_key$|^uuid$|_uuid$)")
_LABEL_NAME = re.compile(r"(label|target|outcome|^y$|class|readmit|churn|default|fraud)", re.I)
MAX_CATEGORIES = 200


@dataclass
class ColumnGuess:
    """What the sample says about one column."""

    name: str
    type: str
    missing: int
    distinct: int
    roles: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Inference:
    """The inferred schema of a source and the sample it came from."""

    source: str
    format: str
    rows: int
    columns: list[ColumnGuess]


def _names(src: Source, params: IngestParams, sample_rows: int) -> list[str]:
    """Column names of a source, as ingest will see them."""
    if src.format == "parquet":
        import pyarrow.parquet as pq

        from batchline import storage

        fs, path = storage.resolve(src.uri)
        return list(pq.ParquetFile(fs.open_input_file(path)).schema_arrow.names)
    stream = open_stream(src)
    try:
        report = ReadReport(src.uri)
        lines = text_lines(src, stream, params.encoding, params.max_record_bytes)
        if src.format == "csv":
            header = ingest_csv.first_record(iter(ingest_csv.Splitter(lines, params, report)))
            if header is None:
                raise DataError(f"{src.uri}: the file is empty; nothing to infer")
            return ingest_csv.header_names(header, params)
        keys: dict[str, None] = {}
        for number, raw in lines:
            if number > sample_rows:
                break
            try:
                obj = json.loads(raw) if raw else None
            except ValueError:
                continue
            if isinstance(obj, dict):
                keys.update(dict.fromkeys(obj))
        return list(keys)
    finally:
        stream.close()


def _sample(src: Source, params: IngestParams, sample_rows: int) -> pa.Table:
    report = ReadReport(src.uri)
    batches: list[pa.RecordBatch] = []
    taken = 0
    if src.format == "parquet":
        reader: Any = ingest_readers.parquet_batches(src, params, report)
        stream = None
    else:
        stream = open_stream(src)
        read = ingest_csv.csv_batches if src.format == "csv" else ingest_readers.jsonl_batches
        reader = read(src, stream, params, report)
    try:
        for batch, _ in reader:
            batches.append(batch.slice(0, sample_rows - taken))
            taken += batches[-1].num_rows
            if taken >= sample_rows:
                break
    finally:
        if stream is not None:
            stream.close()
    return pa.Table.from_batches(batches) if batches else pa.table({})


def _guess(name: str, values: pa.ChunkedArray, rows: int, nulls: list[str]) -> ColumnGuess:
    text = values.combine_chunks().cast(pa.string())
    present = pc.filter(text, pc.invert(pc.fill_null(pc.is_in(text, pa.array(nulls)), True)))
    kind = "string"
    for candidate in _TYPES:
        if len(present) == 0:
            break
        _, bad, overflow = cast_column(present, candidate)
        if not pc.any(pc.or_(bad, overflow)).as_py():
            kind = candidate
            break
    distinct = pc.count_distinct(present).as_py()
    guess = ColumnGuess(name, kind, rows - len(present), distinct)
    uniques = set(pc.unique(present).to_pylist()) if distinct <= 2 else set()
    unique_ish = len(present) >= 20 and distinct >= 0.9 * len(present)
    if kind in ("int64", "string") and (
            unique_ish or (_ID_NAME.search(name) and distinct > MAX_CATEGORIES)):
        guess.roles.append("id")
    if kind in ("date", "timestamp"):
        guess.roles.append("date")
    if kind == "string" and "id" not in guess.roles and distinct <= MAX_CATEGORIES \
            and distinct < max(2, len(present) // 2):
        guess.roles.append("category")
    if kind == "bool" or (distinct == 2 and uniques <= {"0", "1", "0.0", "1.0"}) or (
            _LABEL_NAME.search(name) and distinct == 2):
        guess.roles.append("label candidate")
    if len(present) == 0:
        guess.note = "always empty in the sample"
    return guess


def infer(source: str, sample_rows: int = 10_000, fmt: str | None = None,
          delimiter: str = ",", encoding: str | None = None) -> Inference:
    """Infer the schema of a source's first file from its first `sample_rows` rows."""
    sources = list_sources(source, fmt)
    src = sources[0]
    base = IngestParams(source=source, format=src.format, columns={"_": "string"},
                        delimiter=delimiter, encoding=encoding)
    names = _names(src, base, sample_rows)
    if not names:
        raise DataError(f"{src.uri}: found no columns to infer")
    params = base.model_copy(update={"columns": dict.fromkeys(names, "string")})
    table = _sample(src, params, sample_rows)
    rows = table.num_rows
    if rows == 0:
        raise DataError(f"{src.uri}: no rows to infer types from")
    return Inference(source, src.format, rows,
                     [_guess(n, table.column(n), rows, params.null_values) for n in names])


def to_yaml(result: Inference) -> str:
    """The `params:` lines of stages.ingest for a spec, with the roles as comments."""
    def quoted(name: str) -> str:
        return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else json.dumps(name)

    width = max(len(quoted(c.name)) for c in result.columns) + 1
    lines = [f"# inferred by `batchline infer` from {result.rows:,} rows of {result.source};",
             "# check the types and roles before use",
             f"source: {json.dumps(result.source)}", f"format: {result.format}", "columns:"]
    for c in result.columns:
        notes = list(c.roles)
        if "category" in c.roles:
            notes[notes.index("category")] = f"category ({c.distinct} values)"
        if c.missing:
            notes.append(f"{c.missing} empty")
        if c.note:
            notes.append(c.note)
        comment = f"  # {', '.join(notes)}" if notes else ""
        lines.append(f"  {(quoted(c.name) + ':').ljust(width)} {c.type}{comment}")
    required = [quoted(c.name) for c in result.columns if "id" in c.roles and not c.missing]
    lines.append(f"required: [{', '.join(required)}]")
    for role, title in (("label candidate", "label candidates (train.params.label)"),
                        ("id", "ids (train.params.exclude)"),
                        ("category", "categories (train.params.categorical)"),
                        ("date", "dates (train.params.time_column)")):
        names = [c.name for c in result.columns if role in c.roles]
        if names:
            lines.append(f"# {title}: {', '.join(names)}")
    return "\n".join(lines) + "\n"
