"""features: the pipeline's feature SQL, run by DuckDB over the ingested Arrow data.

The committed input dataset is read through pyarrow (its own S3 filesystem
when the data is remote) and streamed into DuckDB, so no DuckDB extension is
ever downloaded. The SQL sees it as `params.table` (default `input`) and also
under the input dataset's own name (`encounters` in the demo), so specs
written before the name was configurable keep working. The query result is
streamed out in record batches into the committed `features` dataset.
DuckDB spills to the task's temporary folder under its memory limit.

The SQL must be exactly one SELECT: it is parsed and refused otherwise, and
the connection's configuration is locked once the stage has set its limits,
so no statement can raise the memory limit or re-enable file access.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from batchline import cpu, storage
from batchline.errors import DataError, SpecError
from batchline.params import SEGMENT_COLUMN, FeaturesParams
from batchline.task import StageTask

log = logging.getLogger(__name__)
BATCH_ROWS = 200_000
# A fleet's features are sorted by segment and written in row groups this small,
# so that a worker reading one segment skips the others' row groups by their
# min/max statistics instead of scanning the table.
SEGMENT_ROW_GROUP_ROWS = 16_384
_SQL = "stages.features.params.sql"


def connect(params: FeaturesParams) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read only what we register, and never downloads."""
    tmp = os.path.join(tempfile.gettempdir(), "batchline-duckdb")
    return duckdb.connect(config={
        "memory_limit": params.memory_limit,
        "threads": cpu.threads(params.threads),
        "temp_directory": tmp,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })


def check_one_select(sql: str, field: str = _SQL) -> None:
    """Refuse anything but exactly one SELECT statement (no SET, ATTACH, COPY, PRAGMA...)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.ParserException as exc:
        raise SpecError(f"{field}: not valid SQL: {exc}") from None
    if len(statements) != 1:
        raise SpecError(f"{field}: must be exactly one SELECT statement, found "
                        f"{len(statements)} ({[s.type.name for s in statements]}); remove the "
                        "extra statements (limits and settings come from the spec, not the SQL)")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise SpecError(f"{field}: must be a SELECT statement, found "
                        f"{statements[0].type.name}")


def load_input(con: duckdb.DuckDBPyConnection, data: ds.Dataset | pa.Table, table: str,
               aliases: tuple[str, ...] = ()) -> None:
    """Copy the input into a DuckDB temporary table named `table`, with views for `aliases`.

    A table that DuckDB keeps under its memory limit (spilling to disk) lets the
    SQL read the input as often as it likes. Local Parquet files go in through
    DuckDB's own reader; anything else (S3, an in-memory table) is streamed in
    through a pyarrow reader with minimal read-ahead, which bounds memory far
    better than letting DuckDB scan the Arrow dataset with pyarrow's default one.
    """
    files = _local_parquet_files(data)
    if files is not None:
        # DuckDB's own Parquet reader (built in, no extension) reads local files on
        # all its threads, about twice as fast as pyarrow's scanner feeding it.
        con.execute(f'CREATE TEMP TABLE "{table}" AS SELECT * FROM read_parquet(?)', [files])
    else:
        if isinstance(data, pa.Table):
            data = ds.dataset(data)
        con.register("batchline_source", data.scanner(batch_readahead=1,
                                                      fragment_readahead=1).to_reader())
        con.execute(f'CREATE TEMP TABLE "{table}" AS SELECT * FROM batchline_source')
        con.unregister("batchline_source")
    for alias in aliases:
        if alias != table:
            con.execute(f'CREATE TEMP VIEW "{alias}" AS SELECT * FROM "{table}"')


def _local_parquet_files(data: ds.Dataset | pa.Table) -> list[str] | None:
    """The files of a dataset of local Parquet files, in order; None for anything else
    (an S3 dataset is read through pyarrow's S3 filesystem: DuckDB's would need httpfs)."""
    if not isinstance(data, ds.FileSystemDataset) or \
            not isinstance(data.filesystem, pafs.LocalFileSystem) or \
            not isinstance(data.format, ds.ParquetFileFormat):
        return None
    return list(data.files)


def feature_query(params: FeaturesParams) -> str:
    """The user's SELECT wrapped in a deterministic ORDER BY.

    Without `order_by`, rows are ordered by all their columns (`ORDER BY ALL`):
    rows that tie on every column are identical, so the output bytes are the
    same on every rerun whatever DuckDB's parallelism did. Naming a key is
    cheaper on wide tables.
    """
    check_one_select(params.sql)
    order = "ALL" if params.order_by is None else \
        ", ".join(f'"{c}"' for c in params.order_by)
    # Newlines keep a trailing `-- comment` in the user's SQL from swallowing
    # the wrapper; a trailing ';' is dropped so the SELECT can be nested.
    body = params.sql.strip().rstrip(";")
    if params.segments is None:
        query = f"SELECT * FROM (\n{body}\n) AS batchline_features ORDER BY {order}"
        check_one_select(query)
        return query
    # A fleet: each row's segment as text, rows sorted by it first (see
    # SEGMENT_ROW_GROUP_ROWS); NULLs sort last and fall back to the global model.
    by = params.segments.by.strip()
    check_one_select(f"SELECT ({by})", "segments.by")
    # First column, so that ORDER BY ALL (no order_by) sorts by segment first too.
    order = order if order == "ALL" else f"{SEGMENT_COLUMN} NULLS LAST, {order}"
    query = (f"SELECT CAST((\n{by}\n) AS VARCHAR) AS {SEGMENT_COLUMN}, * FROM (\n{body}\n) "
             f"AS batchline_features ORDER BY {order}")
    check_one_select(query, "segments.by")
    return query


def feature_reader(con: duckdb.DuckDBPyConnection, data: ds.Dataset | pa.Table,
                   params: FeaturesParams, aliases: tuple[str, ...] = ("encounters",)
                   ) -> pa.RecordBatchReader:
    """Run the feature SQL over the input (as `params.table` and `aliases`), streamed out."""
    query = feature_query(params)
    load_input(con, data, params.table, aliases)
    # User SQL must not read files or the network on its own: everything it
    # sees was loaded above. Locking the configuration keeps the limits too.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    with duckdb_errors():
        return con.sql(query).to_arrow_reader(BATCH_ROWS)


@contextmanager
def duckdb_errors() -> Iterator[None]:
    """Translate DuckDB's exceptions: SQL mistakes are SpecError, bad values DataError.

    Both are deterministic (exit 2, never retried); only what may heal is left
    to exit 1.
    """
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        raise MemoryError(str(exc)) from exc
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
            duckdb.PermissionException, duckdb.InvalidInputException) as exc:
        raise SpecError(f"{_SQL}: {exc}") from None
    except (duckdb.ConversionException, duckdb.OutOfRangeException,
            duckdb.InvalidTypeException) as exc:
        raise DataError(f"features: the data does not fit the feature SQL ({exc}); fix the "
                        f"SQL ({_SQL}) or the data") from None


def feature_batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The reader's batches, with errors raised while DuckDB computes them translated."""
    with duckdb_errors():
        yield from reader


def run(task: StageTask) -> dict[str, Any]:
    """Compute features for every input row; commit the `features` dataset."""
    params = FeaturesParams(**task.params)
    encounters = storage.open_dataset(task.inputs["encounters"])
    con = connect(params)
    try:
        reader = feature_reader(con, encounters, params, tuple(task.inputs))
        if params.segments is not None and \
                reader.schema.names.count(SEGMENT_COLUMN) > 1:
            raise SpecError(f"{_SQL}: selects a column named {SEGMENT_COLUMN!r}, which "
                            "batchline adds for segments:; rename it")
        row_group = SEGMENT_ROW_GROUP_ROWS if params.segments is not None else None
        with task.writer("features", row_group_rows=row_group) as out:
            for batch in feature_batches(reader):
                out.write(batch)
            if out.schema is None:
                out.schema = reader.schema
            record = out.commit({"columns": len(out.schema)})
    finally:
        con.close()
    log.info("features: %d rows, %d columns", record.rows, len(record.schema))
    return {"rows": record.rows}
