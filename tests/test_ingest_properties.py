"""Property tests: random schemas, random CSV / JSON-lines files with random defects.

The invariant: every input row is either committed with the right values or
quarantined with its line; a file-level defect is a DataError (exit 2) with
nothing committed; nothing else ever escapes. Runs in-process (ingest.run),
not through subprocesses, so 500 cases fit in well under a minute and a half.
The number of cases comes from the hypothesis profile (`ci`: 500, the
default here; `dev`: 60), chosen with HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from conftest import ingest_task
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchline import storage
from batchline.errors import DataError
from batchline.stages import ingest

settings.register_profile("ci", max_examples=500, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

KINDS = ("int64", "float64", "string", "bool", "date")
NULLS = ["", "NA", "N/A", "NULL", "null", "NaN"]
ROW_DEFECTS = ("bad_type", "overflow", "non_finite", "nul", "control", "short", "long",
               "missing")


@dataclass
class Case:
    """One generated file and what ingest must make of it."""

    fmt: str
    names: list[str]
    kinds: list[str]
    text: str = ""
    expected: list[list[Any]] = field(default_factory=list)  # committed rows, in order
    bad_lines: list[int] = field(default_factory=list)
    bad_spans: list[range] = field(default_factory=list)  # physical lines of each bad row
    file_error: str | None = None  # substring of the expected DataError
    params: dict[str, Any] = field(default_factory=dict)
    encoding: str = "utf-8"
    gzip: bool = False


SAFE = "abcdefghijklmnopqrstuvwxyzABC 0123456789-_.é"
RICH = SAFE + ',"\n;ü€'

names_st = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=2,
                    max_size=6, unique=True)


def _value(draw: Any, kind: str, rich: bool) -> tuple[Any, Any]:
    """(value as written, value expected in the committed table)."""
    if kind == "int64":
        v = draw(st.integers(-(2**63), 2**63 - 1))
        return v, v
    if kind == "float64":
        v = draw(st.floats(allow_nan=False, allow_infinity=False))
        return v, v
    if kind == "bool":
        v = draw(st.booleans())
        return v, v
    if kind == "date":
        v = draw(st.dates(date(1900, 1, 1), date(2100, 12, 31)))
        return v, v
    text = draw(st.text(RICH if rich else SAFE, min_size=1, max_size=12))
    if text in NULLS:
        return text, None
    return text, text


def _csv_cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "float64":
        return repr(value)
    if kind == "date":
        return value.isoformat()
    text = str(value)
    if any(c in text for c in ',"\n\r') or text[:1] == '"':
        return '"' + text.replace('"', '""') + '"'
    return text


def _json_value(value: Any, kind: str) -> Any:
    if kind == "date" and isinstance(value, date):
        return value.isoformat()
    return value


@st.composite
def cases(draw: Any) -> Case:
    fmt = draw(st.sampled_from(["csv", "csv", "jsonl"]))
    names = draw(names_st)
    kinds = [draw(st.sampled_from(KINDS)) for _ in names]
    case = Case(fmt, names, kinds)
    stray_row = -1
    nrows = draw(st.integers(1, 25))
    if fmt == "csv" and draw(st.integers(0, 4)) == 0:
        stray_row = draw(st.integers(0, nrows - 1))
    rich = stray_row < 0  # a stray quote needs a file with no other quotes
    case.encoding = draw(st.sampled_from(["utf-8"] * 6 + ["latin-1", "cp1252", "utf-16"]))
    if case.encoding != "utf-8":
        rich = False
    declare_encoding = case.encoding == "utf-8" or draw(st.integers(0, 3)) > 0
    if declare_encoding and case.encoding != "utf-8":
        case.params["encoding"] = case.encoding
    case.gzip = draw(st.integers(0, 5)) == 0
    giant = draw(st.integers(0, 8)) == 0
    if giant:
        case.params["max_record_bytes"] = 1024
    lines: list[str] = []
    line_no = 1
    header = list(names)
    if draw(st.integers(0, 12)) == 0 and fmt == "csv":
        header.append(names[0])
        case.file_error = "more than once"
    if fmt == "csv":
        lines.append(",".join(header) + "\n")
    for r in range(nrows):
        written, expected = [], []
        for kind in kinds:
            if draw(st.integers(0, 6)) == 0:
                token = draw(st.sampled_from(NULLS))
                written.append(token if fmt == "csv" else draw(st.sampled_from([None, token])))
                expected.append(None)
            else:
                w, e = _value(draw, kind, rich)
                written.append(w)
                expected.append(e)
        defect = draw(st.sampled_from(ROW_DEFECTS)) if draw(st.integers(0, 4)) == 0 else None
        bad = _inject(draw, case, defect, kinds, written)
        if giant and r == 0 and "string" in kinds:
            written[kinds.index("string")] = "g" * 1500
            bad = True
        if fmt == "csv":
            # Tokens and spoilt values of typed columns are written as they are.
            cells = [c if isinstance(c, str) and kinds[i] != "string" else _csv_cell(c, kinds[i])
                     for i, c in enumerate(written[:len(kinds)])]
            cells += [str(c) for c in written[len(kinds):]]
            if defect == "short":
                cells = cells[:-1]
            if r == stray_row:
                cells[-1] = '"' + cells[-1]
                bad = True
            # A blank line is not a row (as for pyarrow and pandas): write a
            # lone empty cell as "" so it stays a (short) row.
            line = (",".join(cells) or '""') + "\n"
        else:
            obj = {n: _json_value(v, k) for n, v, k in zip(names, written, kinds, strict=True)}
            line = _json_line(obj, written, defect) + "\n"
        if bad:
            start = line_no + (1 if fmt == "csv" else 0)
            case.bad_lines.append(start)
            case.bad_spans.append(range(start, start + line.count("\n")))
        else:
            case.expected.append(expected)
        lines.append(line)
        line_no += line.count("\n")
    case.text = "".join(lines)
    non_ascii = any(ord(c) > 127 for c in case.text)
    if case.encoding == "utf-16" and not declare_encoding:
        case.file_error = "encoding"  # the byte order mark is met before the header
    elif case.encoding != "utf-8" and not declare_encoding and non_ascii:
        case.file_error = case.file_error or "encoding"
    return case


def _inject(draw: Any, case: Case, defect: str | None, kinds: list[str],
            written: list[Any]) -> bool:
    """Spoil one value of a row as `defect` says; returns whether the row is now bad."""
    if defect is None:
        return False
    if defect in ("short", "long"):
        if case.fmt == "jsonl":
            return False
        if defect == "long":
            written.append("extra")
        return True
    by_kind = {"bad_type": ("int64", "float64", "bool", "date"), "overflow": ("int64",),
               "non_finite": ("float64",), "nul": ("string",), "control": ("string",),
               "missing": ("int64", "float64", "bool", "date", "string")}[defect]
    where = [i for i, k in enumerate(kinds) if k in by_kind]
    if not where:
        return False
    i = draw(st.sampled_from(where))
    if defect == "bad_type":
        written[i] = draw(st.sampled_from(["x1", "1.2.3", "maybe", "2024-13-45", "--"]))
    elif defect == "overflow":
        written[i] = draw(st.sampled_from(["9223372036854775808", "-9223372036854775809",
                                           "1" * 25]))
    elif defect == "non_finite":
        written[i] = draw(st.sampled_from(["inf", "-inf", "1e999", "nan", "Infinity"]))
    elif defect == "nul":
        written[i] = "a\x00b"
    elif defect == "control":
        written[i] = "esc\x1bape"
    elif defect == "missing":
        return False  # a NA token handled as any other missing value
    return True


def _json_line(obj: dict[str, Any], written: list[Any], defect: str | None) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    if defect == "non_finite" and any(v in ("inf", "1e999") for v in obj.values()):
        text = text.replace('"inf"', "Infinity").replace('"1e999"', "1e999")
    return text


def _write(case: Case, folder: Path) -> Path:
    suffix = ".csv" if case.fmt == "csv" else ".jsonl"
    data = case.text.encode(case.encoding)
    path = folder / ("data" + suffix + (".gz" if case.gzip else ""))
    path.write_bytes(gzip.compress(data, mtime=0) if case.gzip else data)
    return path


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return got == want or (math.isnan(got) and math.isnan(want))
    return bool(got == want)


@given(cases())
def test_every_row_committed_or_quarantined_with_its_line(case: Case) -> None:
    folder = Path(tempfile.mkdtemp(prefix="prop-"))
    try:
        source = _write(case, folder)
        params = {"source": str(source), "columns": dict(zip(case.names, case.kinds,
                                                              strict=True)),
                  "max_bad_fraction": 1.0, **case.params}
        task = ingest_task(folder / "store", params, write=False)
        try:
            ingest.run(task)
        except DataError as exc:
            assert case.file_error is not None, f"unexpected DataError: {exc}\n{case.text!r}"
            if case.file_error != "encoding":
                assert case.file_error in str(exc)
            assert storage.read_success(task.outputs["encounters"]) is None
            return
        assert case.file_error is None, f"expected a DataError ({case.file_error})"
        table = storage.open_dataset(task.outputs["encounters"]).to_table()
        got = [list(r.values()) for r in table.to_pylist()]
        assert len(got) == len(case.expected), (got, case.expected, case.text)
        for g, w in zip(got, case.expected, strict=True):
            assert all(_same(a, b) for a, b in zip(g, w, strict=True)), (g, w, case.text)
        q = storage.open_dataset(task.outputs["quarantine"]).to_table()
        # Every bad row is quarantined at its first line. A bad row spanning
        # several lines (a quoted newline) may also have its later lines
        # quarantined, when its quote reads as a stray one; never other lines.
        lines = q.column("line").to_pylist()
        assert set(case.bad_lines) <= set(lines), (q.to_pylist(), case.text)
        assert all(any(n in span for span in case.bad_spans) for n in lines), (
            q.to_pylist(), case.text)
        metrics = storage.committed(task.outputs["encounters"]).metrics
        assert metrics["rows_in"] == metrics["rows_committed"] + metrics["rows_bad"]
        assert metrics["rows_in"] == len(case.expected) + len(lines)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
