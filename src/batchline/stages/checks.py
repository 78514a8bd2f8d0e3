"""Data-quality checks of ingest's committed rows, computed while the rows stream.

Each declared check (stages.ingest.params.checks) is an accumulator: it sees
every row group ingest hands to its writer (`observe`), so quarantined rows
never count, and gives one `CheckResult` at the end. Memory is a few numbers
and at most EXAMPLES values per check, whatever the input's size; the one
exception is `unique` (see _Unique). The results go into the committed
`encounters` `_SUCCESS.json` as `checks`; a failed `on_fail: fail` check
fails the stage before anything is committed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchline.params_checks import ChecksSpec, ColumnChecks, RowChecks

EXAMPLES = 5
SHOWN_CHARS = 40
SPEC_PATH = "stages.ingest.params.checks"


@dataclass(frozen=True)
class CheckContext:
    """What checks judge against besides the rows: the run's date and the previous run."""

    as_of: date
    as_of_from: str  # where as_of came from, recorded with the freshness results
    previous_run: str | None = None
    previous_rows: int | None = None
    no_previous: str = "no previous run was looked for"  # why previous_run is None


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome, as recorded in `_SUCCESS.json` (a report reads these fields)."""

    check: str
    column: str | None
    on_fail: str
    status: str  # pass | warn | fail | skipped
    expected: Any
    observed: Any
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "column": self.column, "on_fail": self.on_fail,
                "status": self.status, "expected": self.expected, "observed": self.observed,
                "message": self.message}


def plain(value: Any) -> Any:
    """A value as JSON holds it: dates as ISO text, NaN as the text 'nan'."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def shown(value: Any) -> str:
    """A value for a message: numbers with thousands separators, text quoted and cut."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = str(value)
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def _examples(values: list[Any]) -> str:
    return ", ".join(shown(v) for v in values)


@dataclass
class _Check(ABC):
    """A check of one thing; `verdict` says (passed or None for skipped, observed, text)."""

    kind: str
    column: str | None
    where: str  # path under `checks`, e.g. columns.age
    on_fail: str
    expected: Any

    @property
    def path(self) -> str:
        return f"{SPEC_PATH}.{self.where}.{self.kind}"

    def expected_text(self) -> str:
        return str(self.expected)

    def observe(self, values: pa.ChunkedArray) -> None:  # noqa: B027 (row checks need none)
        """Take in one row group's values of the column (row checks ignore this)."""

    @abstractmethod
    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        """Each kind of check judges what it observed."""

    def result(self, rows: int, ctx: CheckContext) -> CheckResult:
        passed, observed, text = self.verdict(rows, ctx)
        if passed is None:
            status, head = "skipped", "check skipped"
        elif passed:
            status, head = "pass", "check passed"
        else:
            status, head = self.on_fail, f"check {'failed' if self.on_fail == 'fail' else 'warned'}"
        expected = self.expected_text()
        message = f"{head}: {self.path}{' ' + expected if expected else ''}: {text}"
        return CheckResult(self.kind, self.column, self.on_fail, status, self.expected,
                           observed, message)


@dataclass
class _Range(_Check):
    low: Any = None
    high: Any = None
    rows: int = 0
    values: int = 0
    outside: int = 0
    least: Any = None
    most: Any = None
    found: list[Any] = field(default_factory=list)

    def expected_text(self) -> str:
        return f"[{shown(self.low)}, {shown(self.high)}]"

    def observe(self, values: pa.ChunkedArray) -> None:
        self.rows += len(values)
        self.values += len(values) - values.null_count
        if values.null_count == len(values):
            return
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        self.least = low if self.least is None else min(self.least, low)
        self.most = high if self.most is None else max(self.most, high)
        mask = pc.is_valid(pa.nulls(len(values)))  # all false
        if self.low is not None:
            mask = pc.or_(mask, pc.less(values, _scalar(self.low, values.type)))
        if self.high is not None:
            mask = pc.or_(mask, pc.greater(values, _scalar(self.high, values.type)))
        mask = pc.fill_null(mask, False)
        count = pc.sum(mask).as_py() or 0
        self.outside += count
        if count and len(self.found) < EXAMPLES:
            self.found += values.filter(mask).slice(0, EXAMPLES - len(self.found)).to_pylist()

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        observed = {"rows": self.rows, "values": self.values, "outside": self.outside,
                    "min": plain(self.least),
                    "max": plain(self.most), "examples": [plain(v) for v in self.found]}
        if self.least is None:
            return None, observed, "no values to check"
        spread = f"min {shown(self.least)}, max {shown(self.most)}"
        if not self.outside:
            return True, observed, f"all {self.values:,} values inside ({spread})"
        return False, observed, (f"{self.outside:,} of {self.values:,} values outside, "
                                 f"{spread}; examples {_examples(self.found)}")


def _scalar(bound: Any, kind: pa.DataType) -> pa.Scalar:
    if pa.types.is_timestamp(kind) and not isinstance(bound, datetime):
        bound = datetime(bound.year, bound.month, bound.day)
    if pa.types.is_integer(kind) and isinstance(bound, float):
        return pa.scalar(bound, pa.float64())  # 0.5 stays 0.5; the column is compared as float
    return pa.scalar(bound, kind)


@dataclass
class _Allowed(_Check):
    rows: int = 0
    values: int = 0
    disallowed: int = 0
    found: list[Any] = field(default_factory=list)

    def expected_text(self) -> str:
        return f"[{_examples(self.expected)}]"

    def observe(self, values: pa.ChunkedArray) -> None:
        self.rows += len(values)
        self.values += len(values) - values.null_count
        allowed = pa.array(self.expected, values.type)
        mask = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed)))
        mask = pc.fill_null(mask, False)
        count = pc.sum(mask).as_py() or 0
        self.disallowed += count
        if count and len(self.found) < EXAMPLES:
            for value in pc.unique(values.filter(mask)).to_pylist():
                if value not in self.found and len(self.found) < EXAMPLES:
                    self.found.append(value)

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        observed = {"rows": self.rows, "values": self.values, "disallowed": self.disallowed,
                    "examples": [plain(v) for v in self.found]}
        if not self.disallowed:
            return True, observed, f"all {self.values:,} values allowed"
        return False, observed, (f"{self.disallowed:,} of {self.values:,} values not "
                                 f"allowed; examples {_examples(self.found)}")


@dataclass
class _NullFraction(_Check):
    rows: int = 0
    nulls: int = 0

    def observe(self, values: pa.ChunkedArray) -> None:
        self.rows += len(values)
        self.nulls += values.null_count

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        fraction = self.nulls / self.rows if self.rows else 0.0
        observed = {"rows": self.rows, "nulls": self.nulls, "fraction": round(fraction, 6)}
        if not self.rows:
            return None, observed, "no rows to check"
        text = f"{self.nulls:,} of {self.rows:,} rows empty ({fraction:.2%})"
        return fraction <= self.expected, observed, text


@dataclass
class _Unique(_Check):
    # Holds the column's non-null values until the end (hashes would save memory for
    # long text only, and lose the examples): one column, e.g. 8 bytes a row for int64,
    # 80 MB for 10 million ids. The rest of the table is never held.
    held: list[pa.Array] = field(default_factory=list)

    def observe(self, values: pa.ChunkedArray) -> None:
        self.held += pc.drop_null(values).chunks

    def expected_text(self) -> str:
        return ""

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        observed: dict[str, Any] = {"values": 0, "duplicates": 0, "duplicated_values": 0,
                                    "examples": []}
        if not self.held:
            return None, observed, "no values to check"
        values = pa.chunked_array(self.held, self.held[0].type)
        self.held = []
        counts = pc.value_counts(values)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        order = pc.array_sort_indices(repeated.field("counts"), order="descending")
        found = [(t["values"], t["counts"])
                 for t in repeated.take(order.slice(0, EXAMPLES)).to_pylist()]
        observed.update(values=len(values), duplicates=len(values) - len(counts),
                        duplicated_values=len(repeated),
                        examples=[plain(v) for v, _ in found])
        if not observed["duplicates"]:
            return True, observed, f"all {len(values):,} values distinct"
        shown_found = ", ".join(f"{shown(v)} ({n:,} rows)" for v, n in found)
        return False, observed, (f"{observed['duplicates']:,} of {len(values):,} values "
                                 f"repeat an earlier one ({len(repeated):,} "
                                 f"{'value' if len(repeated) == 1 else 'values'} repeated); "
                                 f"examples {shown_found}")


@dataclass
class _MaxAge(_Check):
    newest: Any = None

    def expected_text(self) -> str:
        return f"{self.expected} days"

    def observe(self, values: pa.ChunkedArray) -> None:
        latest = pc.max(values).as_py()
        if latest is not None and (self.newest is None or latest > self.newest):
            self.newest = latest

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        newest = self.newest.date() if isinstance(self.newest, datetime) else self.newest
        age = (ctx.as_of - newest).days if newest is not None else None
        observed = {"newest": plain(self.newest), "as_of": ctx.as_of.isoformat(),
                    "as_of_from": ctx.as_of_from, "age_days": age}
        if age is None:
            return False, observed, "the column holds no dates at all"
        text = f"newest {shown(self.newest)} is {age:,} days before {ctx.as_of} ({ctx.as_of_from})"
        return age <= self.expected, observed, text


@dataclass
class _RowBounds(_Check):
    @property
    def path(self) -> str:
        return f"{SPEC_PATH}.{self.where}"

    def expected_text(self) -> str:
        low, high = self.expected["min"], self.expected["max"]
        return f"[min {shown(low) if low is not None else '-'}, " \
               f"max {shown(high) if high is not None else '-'}]"

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        low, high = self.expected["min"], self.expected["max"]
        passed = (low is None or rows >= low) and (high is None or rows <= high)
        return passed, {"rows": rows}, f"{rows:,} rows committed"


@dataclass
class _VsPrevious(_Check):
    def expected_text(self) -> str:
        return f"[{shown(self.expected[0])}, {shown(self.expected[1])}] x the previous run"

    def verdict(self, rows: int, ctx: CheckContext) -> tuple[bool | None, Any, str]:
        observed: dict[str, Any] = {"rows": rows, "previous_run": ctx.previous_run,
                                    "previous_rows": ctx.previous_rows, "ratio": None}
        if ctx.previous_run is None or ctx.previous_rows is None:
            return None, observed, ctx.no_previous
        if ctx.previous_rows == 0:
            return None, observed, f"the previous run {ctx.previous_run} committed 0 rows"
        ratio = rows / ctx.previous_rows
        observed["ratio"] = round(ratio, 4)
        low, high = self.expected
        text = (f"{rows:,} rows, {ratio:.3g} x the {ctx.previous_rows:,} of the previous run "
                f"{ctx.previous_run}")
        return low <= ratio <= high, observed, text


def _column_checks(column: str, where: str, spec: ColumnChecks) -> list[_Check]:
    out: list[_Check] = []
    if spec.range is not None:
        low, high = spec.range
        out.append(_Range("range", column, where, spec.on_fail, [plain(low), plain(high)],
                          low=low, high=high))
    if spec.allowed is not None:
        out.append(_Allowed("allowed", column, where, spec.on_fail, list(spec.allowed)))
    if spec.max_null_fraction is not None:
        out.append(_NullFraction("max_null_fraction", column, where, spec.on_fail,
                                 spec.max_null_fraction))
    if spec.unique:
        out.append(_Unique("unique", column, where, spec.on_fail, True))
    if spec.max_age_days is not None:
        out.append(_MaxAge("max_age_days", column, where, spec.on_fail, spec.max_age_days))
    return out


def _row_checks(where: str, spec: RowChecks) -> list[_Check]:
    out: list[_Check] = []
    if spec.min is not None or spec.max is not None:
        out.append(_RowBounds("rows", None, where, spec.on_fail,
                              {"min": spec.min, "max": spec.max}))
    if spec.vs_previous is not None:
        out.append(_VsPrevious("vs_previous", None, where, spec.on_fail,
                               list(spec.vs_previous)))
    return out


class Checks:
    """Every check a spec declares, fed row group by row group, judged at the end."""

    def __init__(self, spec: ChecksSpec) -> None:
        self.by_column = [c for column, where, one in spec.column_checks()
                          for c in _column_checks(column, where, one)]
        self.of_rows = [c for where, one in spec.row_checks() for c in _row_checks(where, one)]
        self.rows = 0

    @property
    def needs_previous(self) -> bool:
        """Whether a check compares with the previous run (worth looking it up)."""
        return any(isinstance(c, _VsPrevious) for c in self.of_rows)

    def observe(self, table: pa.Table) -> None:
        """Take in one group of rows that will be committed."""
        self.rows += table.num_rows
        for check in self.by_column:
            assert check.column is not None
            check.observe(table.column(check.column))

    def results(self, ctx: CheckContext) -> list[CheckResult]:
        """Every check's result, column checks first, in spec order."""
        return [c.result(self.rows, ctx) for c in (*self.by_column, *self.of_rows)]


def failure_message(failed: list[CheckResult]) -> str:
    """One message for every failed check: what each expected, what it saw, what to do."""
    noun = "check" if len(failed) == 1 else "checks"
    lines = "\n  ".join(r.message for r in failed)
    return (f"{len(failed)} data-quality {noun} failed; nothing was committed:\n  {lines}\n"
            "Fix the data or relax the check (on_fail: warn records it without failing).")
