"""features: the pipeline's feature SQL, run by DuckDB over the ingested Arrow data.

The committed `encounters` dataset is read through pyarrow (its own S3
filesystem when the data is remote) and streamed into DuckDB, so no DuckDB
extension is ever downloaded. The query result
is streamed out in record batches into the committed `features` dataset.
DuckDB spills to the task's temporary folder under its memory limit.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from batchline import storage
from batchline.errors import DataError, SpecError
from batchline.params import FeaturesParams
from batchline.task import StageTask

log = logging.getLogger(__name__)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BATCH_ROWS = 200_000


def connect(params: FeaturesParams) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read only what we register, and never downloads."""
    tmp = os.path.join(tempfile.gettempdir(), "batchline-duckdb")
    return duckdb.connect(config={
        "memory_limit": params.memory_limit,
        "threads": params.threads,
        "temp_directory": tmp,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })


def load_encounters(con: duckdb.DuckDBPyConnection, encounters: ds.Dataset | pa.Table) -> None:
    """Copy the input into a DuckDB temporary table named `encounters`.

    Streaming it in through a reader with minimal read-ahead, into a table that
    DuckDB keeps under its memory limit (spilling to disk), bounds memory far
    better than letting DuckDB scan the Arrow dataset with pyarrow's default
    read-ahead, and lets the SQL read `encounters` as often as it likes.
    """
    if isinstance(encounters, pa.Table):
        encounters = ds.dataset(encounters)
    con.register("batchline_source", encounters.scanner(batch_readahead=1,
                                                        fragment_readahead=1).to_reader())
    con.execute("CREATE TEMP TABLE encounters AS SELECT * FROM batchline_source")
    con.unregister("batchline_source")


def feature_reader(con: duckdb.DuckDBPyConnection, encounters: ds.Dataset | pa.Table,
                   params: FeaturesParams) -> pa.RecordBatchReader:
    """Run the feature SQL over `encounters`, streamed out in record batches."""
    if not _IDENT.match(params.order_by):
        raise SpecError(f"stages.features.params.order_by: {params.order_by!r} is not a column "
                        "name")
    load_encounters(con, encounters)
    # User SQL must not read files or the network on its own: everything it
    # sees was loaded above.
    con.execute("SET enable_external_access = false")
    query = f"SELECT * FROM ({params.sql}) AS features ORDER BY {params.order_by}"
    try:
        return con.sql(query).to_arrow_reader(BATCH_ROWS)
    except duckdb.OutOfMemoryException as exc:
        raise MemoryError(str(exc)) from exc
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
            duckdb.PermissionException, duckdb.InvalidInputException) as exc:
        raise SpecError(f"stages.features.params.sql: {exc}") from None
    except duckdb.ConversionException as exc:
        raise DataError(f"features: the data does not fit the feature SQL: {exc}") from None


def run(task: StageTask) -> dict[str, Any]:
    """Compute features for every encounter; commit the `features` dataset."""
    params = FeaturesParams(**task.params)
    encounters = storage.open_dataset(task.inputs["encounters"])
    con = connect(params)
    try:
        reader = feature_reader(con, encounters, params)
        with task.writer("features") as out:
            try:
                for batch in reader:
                    out.write(batch)
            except duckdb.OutOfMemoryException as exc:
                raise MemoryError(str(exc)) from exc
            if out.schema is None:
                out.schema = reader.schema
            record = out.commit({"columns": len(out.schema)})
    finally:
        con.close()
    log.info("features: %d rows, %d columns", record.rows, len(record.schema))
    return {"rows": record.rows}
