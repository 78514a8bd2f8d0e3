"""CSV for ingest: physical lines, then records, then batches of text columns.

Why a splitter in front of pyarrow's parser: pyarrow either treats every
newline as a row end (so a legitimate quoted newline breaks a row) or lets a
stray quote swallow the rest of a block into one field, with no line number.
Here each physical line comes in (numbered, bounded in size, already UTF-8),
a cheap regular expression decides whether it ends inside a quoted field,
and a record may span at most `max_quoted_lines` lines and `max_record_bytes`
bytes. A quoted record that exceeds those, reaches the end of the file, or
closes into the wrong number of fields is a stray quote: its first line is
quarantined and the lines after it are read again as rows. pyarrow then parses
runs of whole records, one block each, so no field ever straddles blocks.
Lines that are plainly one record each pass in whole runs without the
per-line walk (ingest_plain finds them with numpy); the result is the same.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.csv as pacsv

from batchline.errors import DataError
from batchline.params import IngestParams
from batchline.stages.ingest_plain import Bulk, Run
from batchline.stages.ingest_sources import (
    Line,
    ReadReport,
    Source,
    check_header,
    text_lines,
    text_lines_in_bulk,
)

# Records are handed to pyarrow in runs of about this many bytes: small enough
# that the text and its parsed columns stay a few MB, large enough to amortize
# each call.
CSV_BLOCK_BYTES = 2 << 20
RECORD_SHOWN = 2_000
Lines = Iterator[Line | Bulk]


class Record(NamedTuple):
    """One CSV record: the line it starts on, its bytes, how many lines it spans, and
    how many bytes of the file had been read when it was complete."""

    line: int
    data: bytes
    nlines: int
    end: int

    @property
    def last_line(self) -> int:
        return self.line + self.nlines - 1


def closed_pattern(delimiter: str, quote: str) -> re.Pattern[bytes]:
    """A pattern that matches a record whose quoted fields are all closed.

    A field is quoted only if it starts with the quote (as pyarrow and RFC 4180
    read it), so `O"Brien` is plain text and never opens anything.
    """
    d, q = re.escape(delimiter.encode()), re.escape(quote.encode())
    # (?!q): a quote right after the closing one is an escaped quote, not the end.
    field = rb"(?:%s(?:[^%s]|%s%s)*%s(?!%s)[^%s\r\n]*|[^%s%s\r\n][^%s\r\n]*|)" % (
        q, q, q, q, q, q, d, d, q, d)
    return re.compile(rb"(?:%s%s)*%s\r?\n?" % (field, d, field), re.S)


class Splitter:
    """Turns numbered physical lines into records, quarantining stray quotes and giant lines.

    Lines may also come as a Bulk: while no record is open and the header is
    known, the Bulk's runs of plain lines (see ingest_plain) pass as one Run
    each, and only its other lines are walked here one by one.
    """

    def __init__(self, lines: Lines, params: IngestParams, report: ReadReport) -> None:
        self.lines = lines
        self.params = params
        self.report = report
        self.quote = params.quote_char.encode() if params.quote_char else None
        self.closed = closed_pattern(params.delimiter, params.quote_char or '"')
        self.delimiter = params.delimiter.encode()
        self.back: deque[Line] = deque()
        self.bulk: Bulk | None = None  # lines read from the source, not yet handed on
        self.expected = 0  # fields per record, once the header is known
        self.offset = 0

    def __iter__(self) -> Iterator[Record | Run]:
        pending: list[tuple[int, bytes]] = []
        size = 0
        while True:
            if not self.back and not pending and self.expected and self.bulk:
                run = self.bulk.take_run(self.offset)
                if run is not None:
                    self.offset = run.end
                    yield run
                    continue
            item = self.back.popleft() if self.back else self._next()
            if isinstance(item, Bulk):
                self.bulk = item
                continue
            if item is None:
                if not pending:
                    return
                self._stray(pending, "its quoted field is not closed before the end of the "
                            "file")
                pending = []
                continue
            number, raw = item
            if raw is None:
                if pending:
                    self._stray(pending, "its quoted field runs into a line longer than "
                                "max_record_bytes", then=[item])
                    pending = []
                    continue
                self._skip(number, f"line is longer than max_record_bytes="
                           f"{self.params.max_record_bytes} bytes; raise "
                           "stages.ingest.params.max_record_bytes to read it", None)
                continue
            if not pending:
                if raw in (b"\n", b"\r\n"):
                    continue  # blank lines are not rows, as for pyarrow and pandas
                if b"\r" in raw.rstrip(b"\r\n") and (self.quote is None or
                                                       self.quote not in raw):
                    # Arrow's reader ends a row at a bare \r: the row would split.
                    self._skip(number, "a carriage return (\\r) inside the line, not at its "
                               "end, would split the row; remove it or quote the field", raw)
                    continue
                if self.quote is None or self.quote not in raw or self.closed.fullmatch(raw):
                    yield Record(number, raw, 1, self.offset)
                else:
                    pending, size = [(number, raw)], len(raw)
                continue
            pending.append((number, raw))
            size += len(raw)
            if self.quote is not None and self.quote in raw:
                data = b"".join(r for _, r in pending)
                if self.closed.fullmatch(data):
                    fields = self._fields(data) if self.expected else 0
                    if fields == self.expected:
                        yield Record(pending[0][0], data, len(pending), self.offset)
                    else:
                        self._stray(pending, f"its quoted field closes on line {number} into "
                                    f"{fields} fields, not {self.expected}")
                    pending = []
                    continue
            if len(pending) > self.params.max_quoted_lines or size > self.params.max_record_bytes:
                self._stray(pending, f"its quoted field is still open after "
                            f"{len(pending)} lines ({size} bytes), more than max_quoted_lines="
                            f"{self.params.max_quoted_lines} / max_record_bytes="
                            f"{self.params.max_record_bytes}")
                pending = []

    def _next(self) -> Line | Bulk | None:
        """The next line read from the source (counting its bytes), or a new Bulk of them."""
        if self.bulk:
            number, raw = self.bulk.next_line()
            self.offset += len(raw)
            return number, raw
        item = next(self.lines, None)
        if isinstance(item, Bulk):
            item.analyse(self.delimiter, self.quote)
        elif item is not None and item[1] is not None:
            self.offset += len(item[1])
        return item

    def _fields(self, data: bytes) -> int:
        reader = csv.reader([data.decode("utf-8", "replace").rstrip("\r\n")],
                            delimiter=self.params.delimiter,
                            quotechar=self.params.quote_char or '"', doublequote=True,
                            strict=False)
        try:
            return len(next(reader))
        except (csv.Error, StopIteration):
            return 0

    def _skip(self, line: int, reason: str, record: bytes | None) -> None:
        self.report.rows_read += 1
        text = None if record is None else record[:RECORD_SHOWN].decode("utf-8", "replace")
        self.report.skip(line, reason, text)

    def _stray(self, pending: list[tuple[int, bytes]], why: str,
               then: list[tuple[int, bytes | None]] | None = None) -> None:
        """Quarantine the line that opened a runaway quote; read the lines after it again."""
        start, raw = pending[0]
        self._skip(start, f"unbalanced quote: a quoted field opens on line {start} and {why}; "
                   "the lines after it were read as rows", raw)
        again: list[tuple[int, bytes | None]] = [*pending[1:], *(then or [])]
        self.back.extendleft(reversed(again))


def first_record(records: Iterator[Record | Run]) -> Record | None:
    """The header record: the splitter passes runs only once it knows the header's width."""
    first = next(records, None)
    if isinstance(first, Run):
        raise RuntimeError("bug: ingest's CSV splitter passed a run of lines before the header")
    return first


def header_names(record: Record, params: IngestParams) -> list[str]:
    """Column names of a header record, read with the same delimiter and quote."""
    text = record.data.decode("utf-8").rstrip("\r\n")
    reader = csv.reader([text], delimiter=params.delimiter,
                        quotechar=params.quote_char or '"', doublequote=True, strict=False,
                        quoting=csv.QUOTE_MINIMAL if params.quote_char else csv.QUOTE_NONE)
    return next(reader, [])


def csv_batches(src: Source, stream: pa.NativeFile, params: IngestParams, report: ReadReport,
                fast: bool = True) -> Iterator[tuple[pa.RecordBatch, list[int]]]:
    """(batch of the declared columns as text, physical line of each row) of one CSV file.

    `fast=False` walks every line in Python (see ingest_plain): the same
    batches, lines and report, slower; tests compare the two.
    """
    lines = text_lines_in_bulk if fast else text_lines
    splitter = Splitter(lines(src, stream, params.encoding, params.max_record_bytes),
                        params, report)
    records = iter(splitter)
    header = first_record(records)
    if report.skipped:
        line, reason, _ = report.skipped[0]
        raise DataError(f"{src.uri}: line {line}, before or in the header: {reason}")
    if header is None:
        raise DataError(f"{src.uri}: the file is empty; expected a header line and rows")
    if b"\x00" in header.data:
        raise DataError(f"{src.uri}: line {header.line}: the header holds NUL bytes, so this is "
                        "binary data, not CSV; point stages.ingest.params.source at text files")
    names = header_names(header, params)
    check_header(src.uri, names, params.columns, report)
    splitter.expected = len(names)
    # Blocks end at the last record that ends within each CSV_BLOCK_BYTES of the
    # file, where pyarrow's own reader ended them: clean files give the same
    # batches, hence the same row groups and the same committed bytes, as before.
    chunk: list[Record | Run] = []
    limit = CSV_BLOCK_BYTES
    for record in records:
        while isinstance(record, Run) and record.end > limit:
            # The run's records that end within this block join it; the rest start the next.
            cut = record.data.rfind(b"\n", 0, limit - record.start) + 1
            if cut:
                head, record = record.split(cut)
                chunk.append(head)
            if chunk:
                yield parse_records(src, chunk, names, params, report)
                chunk = []
            while record.first_end() > limit:
                limit += CSV_BLOCK_BYTES
        if record.end > limit and chunk:
            yield parse_records(src, chunk, names, params, report)
            chunk = []
        while record.end > limit:
            limit += CSV_BLOCK_BYTES
        chunk.append(record)
    if chunk:
        yield parse_records(src, chunk, names, params, report)


def parse_records(src: Source, chunk: list[Record | Run], names: list[str],
                  params: IngestParams, report: ReadReport,
                  ) -> tuple[pa.RecordBatch, list[int]]:
    """Parse whole records with pyarrow as one block; rows of the wrong width are quarantined."""
    invalid: set[int] = set()
    starts: list[int] = []  # the line each record starts on
    for r in chunk:
        if isinstance(r, Run):
            starts.extend(range(r.line, r.line + r.nrecords))
        else:
            starts.append(r.line)

    def on_invalid(row: Any) -> str:
        # row.number counts records of this block from 1 (use_threads=False).
        index = min(max((row.number or 1) - 1, 0), len(starts) - 1)
        invalid.add(index)
        report.skip(starts[index], f"expected {row.expected_columns} columns, got "
                    f"{row.actual_columns}", row.text[:RECORD_SHOWN])
        return "skip"

    data = b"".join(r.data for r in chunk)
    declared = list(params.columns)
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                           block_size=max(len(data) + 1, 1 << 16)),
            parse_options=pacsv.ParseOptions(
                delimiter=params.delimiter, quote_char=params.quote_char or False,
                double_quote=True, newlines_in_values=params.quote_char is not None,
                ignore_empty_lines=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=declared, column_types={n: pa.string() for n in declared},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{src.uri}: lines {chunk[0].line}-{chunk[-1].last_line}"
                        f": cannot be parsed as CSV ({exc})") from None
    report.rows_read += len(starts)
    if table.num_rows + len(invalid) != len(starts):
        raise RuntimeError(f"bug: pyarrow returned {table.num_rows} rows and rejected "
                           f"{len(invalid)} of {len(starts)} records in {src.uri} from line "
                           f"{chunk[0].line}; nothing was committed")
    lines = [n for i, n in enumerate(starts) if i not in invalid] if invalid else starts
    batch = pa.RecordBatch.from_arrays(
        [table.column(n).combine_chunks() for n in declared], names=declared)
    return batch, lines
