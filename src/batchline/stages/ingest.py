"""ingest: raw CSV, JSON lines or Parquet to typed Parquet against a declared schema.

Every file is streamed in bounded batches, so memory stays flat whatever the
input size (see ingest_csv for how CSV records are cut). Values are read as
text and cast column by column; a row that does not parse goes to the
`quarantine` dataset with its file, line and reason instead of failing the
stage. Every row read is either committed or quarantined: the stage checks
that before it commits. If more than `max_bad_fraction` of the rows are bad,
or a file is unusable as a whole (missing or duplicated columns, not text in
its encoding, empty), the stage raises DataError (exit 2) and commits nothing.
The spec's data-quality checks (`checks`, see stages/checks.py) see the rows
as they are committed; a failed `on_fail: fail` check also commits nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from batchline import storage
from batchline.errors import DataError
from batchline.params import IngestParams
from batchline.stages.checks import CheckResult, Checks, failure_message
from batchline.stages.checks_context import check_context
from batchline.stages.ingest_csv import CSV_BLOCK_BYTES, RECORD_SHOWN, csv_batches
from batchline.stages.ingest_readers import jsonl_batches, parquet_batches
from batchline.stages.ingest_sources import ReadReport, Source, list_sources, open_stream
from batchline.stages.ingest_validate import ARROW_TYPES, declared_schema, validate_batch
from batchline.stages.overlap import overlap
from batchline.task import StageTask

__all__ = ["ARROW_TYPES", "CSV_BLOCK_BYTES", "QUARANTINE_SCHEMA", "Tally", "declared_schema",
           "ingest_file", "list_sources", "run", "validate_batch"]

log = logging.getLogger(__name__)

QUARANTINE_SCHEMA = pa.schema([("source_file", pa.string()), ("line", pa.int64()),
                               ("reason", pa.string()), ("record", pa.string())])
MAX_REASONS_SHOWN = 5


@dataclass
class Tally:
    """What ingest saw, for the success record, the bad-fraction check and the accounting.

    `rows` is counted by the readers, `good` where rows are handed to the
    output writer and `bad` where they are handed to the quarantine writer:
    three separate counts, so a row lost between them shows as a mismatch.
    """

    rows: int = 0
    good: int = 0
    bad: int = 0
    files: int = 0
    reasons: list[str] = field(default_factory=list)
    ignored: dict[tuple[str, ...], list[str]] = field(default_factory=dict)
    # the spec's data-quality checks, fed the rows handed to the output writer
    checks: Checks | None = None
    check_results: list[CheckResult] = field(default_factory=list)

    def check(self, where: str) -> None:
        """Fail loudly (a bug, exit 1) unless rows read = rows committed + quarantined."""
        if self.rows != self.good + self.bad:
            raise RuntimeError(
                f"bug: ingest read {self.rows} rows but is committing {self.good} and "
                f"quarantining {self.bad} ({where}); nothing was committed, please report it")

    def warnings(self) -> list[str]:
        """Things the user should hear about although the stage succeeded."""
        out = []
        for names, uris in self.ignored.items():
            more = f" and {len(uris) - 1} more files" if len(uris) > 1 else ""
            out.append(f"{uris[0]}{more}: columns {list(names)} are not declared in "
                       "stages.ingest.params.columns and were not ingested")
        if self.bad:
            first = f"; first: {self.reasons[0]}" if self.reasons else ""
            out.append(f"{self.bad} of {self.rows} rows quarantined (dataset "
                       f"ingest/quarantine){first}")
        out += [r.message for r in self.check_results if r.status == "warn"]
        return out


class _RowGroup:
    """Gathers the small batches the readers yield into row groups of `rows`."""

    def __init__(self, out: storage.DatasetWriter, rows: int, tally: Tally) -> None:
        self.out = out
        self.rows = rows
        self.tally = tally
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
            table = pa.concat_tables(self.tables)
            self.out.write(table)
            self.tally.good += table.num_rows
            if self.tally.checks is not None:
                self.tally.checks.observe(table)
        self.tables, self.count = [], 0


def _batches(src: Source, params: IngestParams, report: ReadReport,
             ) -> Iterator[tuple[pa.RecordBatch, list[int]]]:
    if src.format == "parquet":
        yield from parquet_batches(src, params, report)
        return
    stream = open_stream(src)
    try:
        reader = csv_batches if src.format == "csv" else jsonl_batches
        yield from reader(src, stream, params, report)
    except (pa.ArrowInvalid, EOFError, OSError) as exc:
        # A corrupt or truncated compressed file fails the same way every time;
        # any other OSError (network, disk) may heal, so it stays retryable.
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowInvalid) \
                and "compress" not in str(exc).lower():
            raise
        raise DataError(f"{src.uri}: cannot be read as {src.compression or 'compressed'} "
                        f"{src.format} ({exc}); check that the file is complete") from None
    finally:
        stream.close()


def _quarantine(quarantine: storage.DatasetWriter, tally: Tally, uri: str,
                rows: list[tuple[int, str, str | None]]) -> None:
    if not rows:
        return
    quarantine.write(pa.table({
        "source_file": [uri] * len(rows), "line": [n for n, _, _ in rows],
        "reason": [r for _, r, _ in rows], "record": [t for _, _, t in rows],
    }, schema=QUARANTINE_SCHEMA))
    tally.bad += len(rows)
    if len(tally.reasons) < MAX_REASONS_SHOWN:
        tally.reasons.extend(f"{uri}:{n}: {r}" for n, r, _ in rows[:MAX_REASONS_SHOWN])


def _typed(src: Source, params: IngestParams, report: ReadReport,
           ) -> Iterator[tuple[pa.RecordBatch, list[int], pa.Table, list[tuple[int, str]]]]:
    """(text batch, lines, its good rows typed, [(row index, reason)]) of one source file."""
    for batch, lines in overlap(_batches(src, params, report), name="ingest-parse"):
        try:
            good, bad = validate_batch(batch, params)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{src.uri}: rows at lines {lines[0]}-{lines[-1]} cannot be typed "
                            f"as declared in stages.ingest.params.columns ({exc})") from None
        yield batch, lines, good, bad


def ingest_file(src: Source, params: IngestParams, out: storage.DatasetWriter,
                quarantine: storage.DatasetWriter, tally: Tally) -> None:
    """Stream one source file into `out`, sending bad rows to `quarantine` with their lines.

    Reading and typing run on two helper threads (overlap) while this one writes:
    `report` is only the reading helper's until the loop ends, and only read after it.
    """
    report = ReadReport(src.uri)
    yielded = 0
    pending = _RowGroup(out, params.batch_rows, tally)
    for batch, lines, good, bad in overlap(_typed(src, params, report), name="ingest-read"):
        yielded += batch.num_rows
        pending.add(good)
        if bad:
            raw = batch.take(pa.array([i for i, _ in bad], pa.int64())).to_pylist()
            _quarantine(quarantine, tally, src.uri, [
                (lines[i], reason, json.dumps(record, default=str)[:RECORD_SHOWN])
                for (i, reason), record in zip(bad, raw, strict=True)])
    pending.flush()
    _quarantine(quarantine, tally, src.uri, sorted(report.skipped))
    if report.rows_read != yielded + len(report.skipped):
        raise RuntimeError(f"bug: {src.uri}: the reader counted {report.rows_read} rows but "
                           f"passed on {yielded} and skipped {len(report.skipped)}")
    if report.rows_read == 0:
        raise DataError(f"{src.uri}: the file has a header but no rows")
    tally.rows += report.rows_read
    if report.ignored:
        tally.ignored.setdefault(tuple(report.ignored), []).append(src.uri)
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
    tally = Tally(checks=Checks(params.checks) if params.checks is not None else None)
    schema = declared_schema(params)
    with task.writer("encounters", schema) as out, \
            task.writer("quarantine", QUARANTINE_SCHEMA) as quarantine:
        for src in sources:
            log.info("ingest: reading %s as %s", src.uri, src.format)
            ingest_file(src, params, out, quarantine, tally)
        fraction = tally.bad / tally.rows if tally.rows else 1.0
        if fraction > params.max_bad_fraction:
            shown = "\n  ".join(tally.reasons[:MAX_REASONS_SHOWN])
            raise DataError(
                f"{tally.bad} of {tally.rows} rows ({fraction:.2%}) are malformed, more than "
                f"stages.ingest.params.max_bad_fraction={params.max_bad_fraction}; first ones:\n"
                f"  {shown}\nFix the source or raise max_bad_fraction.")
        tally.check(f"{len(sources)} files of {params.source}")
        _judge_checks(task, tally)
        source_meta = _source_meta(params.source)
        metrics = {"rows_in": tally.rows, "rows_committed": tally.good, "rows_bad": tally.bad,
                   "files": tally.files, "source_meta": source_meta,
                   "columns_ignored": sorted({c for names in tally.ignored for c in names}),
                   "warnings": tally.warnings()}
        if tally.checks is not None:
            metrics.update(_check_metrics(tally.check_results))
        if "best_auc_recent" in source_meta:  # the demo generator's ceiling, for the summary
            metrics["generator_best_auc"] = source_meta["best_auc_recent"]
        quarantine.commit({"rows": tally.bad})
        record = out.commit(metrics)
    for warning in tally.warnings():
        log.warning("ingest: %s", warning)
    return {"rows": record.rows, "rows_bad": tally.bad}


def _judge_checks(task: StageTask, tally: Tally) -> None:
    """Judge the spec's checks on the rows about to be committed; DataError (nothing
    committed) naming every failed `on_fail: fail` check."""
    if tally.checks is None:
        return
    context = check_context(task, previous=tally.checks.needs_previous)
    tally.check_results = tally.checks.results(context)
    failed = [r for r in tally.check_results if r.status == "fail"]
    if failed:
        raise DataError(failure_message(failed))


def _check_metrics(results: list[CheckResult]) -> dict[str, Any]:
    return {"checks": [r.to_json() for r in results],
            "checks_failed": sum(r.status == "fail" for r in results),
            "checks_warned": sum(r.status == "warn" for r in results)}
