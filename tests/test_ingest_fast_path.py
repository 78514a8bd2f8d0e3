"""Ingest's fast path (runs of plain lines found with numpy) against the careful line walk.

The careful path (`csv_batches(..., fast=False)`) walks every physical line
in Python; it is what the other ingest tests were written against. The fast
path must give exactly the same batches, the same line of every row, the same
quarantined lines and reasons and the same errors, whatever the text: random
files made of the characters that matter (delimiter, quote, newline, carriage
return, blank lines, control and non-ASCII characters), random dialects and
limits, and one file of several read blocks with defects scattered through it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchline.errors import DataError
from batchline.params import IngestParams
from batchline.stages.ingest_csv import CSV_BLOCK_BYTES, csv_batches
from batchline.stages.ingest_sources import ReadReport, Source, open_stream

settings.register_profile("fast-path-ci", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("fast-path-dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
PROFILE = "fast-path-dev" if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else "fast-path-ci"


def _read(path: Path, params: IngestParams, fast: bool) -> Any:
    """Everything csv_batches tells about a file: batches, lines, report; or its error."""
    src = Source(str(path), "csv")
    report = ReadReport(src.uri)
    stream = open_stream(src)
    try:
        batches = list(csv_batches(src, stream, params, report, fast=fast))
    except (DataError, pa.ArrowInvalid) as exc:
        return ("error", type(exc).__name__, str(exc))
    finally:
        stream.close()
    return batches, report.rows_read, report.skipped, report.ignored


def _same_both_ways(path: Path, params: IngestParams) -> Any:
    careful = _read(path, params, fast=False)
    assert _read(path, params, fast=True) == careful
    return careful


# No lone carriage return: pyarrow ends a row there and the careful path stops with
# "bug: pyarrow returned ... rows" (exit 1, nothing committed), fast or not.
PIECES = ["a", "b1", "7", "é", "€", " ", ",", ";", "\t", '"', '""', "'", "\n", "\r\n",
          "\n\n", "\x1b", '"x,y"', '"p\nq"', "'r\ns'"]


@st.composite
def files(draw: Any) -> tuple[bytes, dict[str, Any]]:
    delimiter = draw(st.sampled_from([",", ";", "\t"]))  # pyarrow takes ASCII only
    quote = draw(st.sampled_from(['"', "'", None]))
    header = delimiter.join(["c1", "c2", "c3"]) + "\n"
    rows = draw(st.lists(st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
                         max_size=40))
    # Mostly well-formed rows, so runs of plain lines occur between the odd ones.
    plain = [delimiter.join([f'"{i}"', str(i), "x"]) + "\n" for i in range(len(rows))]
    body = "".join(r if draw(st.booleans()) else p for r, p in zip(rows, plain, strict=True))
    params = {"columns": {"c1": "string", "c2": "string", "c3": "string"},
              "delimiter": delimiter, "quote_char": quote,
              "max_quoted_lines": draw(st.integers(1, 4)), "max_record_bytes": 1024}
    return (header + body).encode(), params


@settings(settings.get_profile(PROFILE))
@given(files())
def test_fast_path_reads_random_text_as_the_careful_path(tmp_path_factory: Any,
                                                         file: tuple[bytes, dict[str, Any]],
                                                         ) -> None:
    data, params = file
    path = tmp_path_factory.mktemp("fast") / "data.csv"
    path.write_bytes(data)
    _same_both_ways(path, IngestParams(source=str(path), **params))


def test_fast_path_across_read_blocks_with_scattered_defects(tmp_path: Path) -> None:
    """Several CSV blocks and read buffers; quoted newlines, stray quotes, blank lines,
    a long line and other oddities at random places, some across buffer edges."""
    rng = random.Random(15)
    lines = ['id,name,note\n']
    odd = ['{i},"multi\nline",x\n', '{i},"stray,x\n', '\n', '{i},O"Brien,x\r\n',
           '{i},"a ""quoted"" word",x\n', '{i},"in\rquotes",x\n', '{i},' + 'w' * 1500 + ',x\n',
           '{i},"x","y","z"\n', '{i},short\n']
    for i in range(5 * CSV_BLOCK_BYTES // 2 // 30):
        pattern = rng.choice(odd) if rng.random() < 0.002 else '{i},"name {i}",plain text\n'
        lines.append(pattern.format(i=i))
    path = tmp_path / "big.csv"
    path.write_text("".join(lines), encoding="utf-8")
    params = IngestParams(source=str(path), max_record_bytes=1024,
                          columns={"id": "int64", "name": "string", "note": "string"})
    batches, rows, skipped, _ = _same_both_ways(path, params)
    assert len(batches) >= 3  # the file spans several blocks
    assert rows > 150_000 and skipped  # and its defects were met
