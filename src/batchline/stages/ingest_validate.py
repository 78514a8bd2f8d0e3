"""Typing ingest's text columns against the declared schema, row by row verdicts.

Every check yields a mask with no nulls (a null in a filter mask drops the row
silently, which is how rows once vanished), and a reason for every row it
rejects. Only rejected values become Python objects.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline.params import IngestParams

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(),
    "date": pa.date32(), "timestamp": pa.timestamp("us"),
}
_PATTERNS = {
    "int64": r"^\s*[-+]?[0-9]+\s*$",
    "float64": r"^\s*[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|(?i:inf|infinity|nan))"
               r"\s*$",
    "bool": r"^(?i)(true|false|1|0)$",
}
# C0 controls and DEL, except tab, newline and carriage return that text may hold.
_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_INT64_MAX = "9223372036854775807"
SHOWN = 80


def declared_schema(params: IngestParams) -> pa.Schema:
    """The committed table's schema: the declared columns, in declared order."""
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in params.columns.items()])


def _false(n: int) -> pa.Array:
    return pc.is_valid(pa.nulls(n))


def _mask(values: pa.Array) -> pa.Array:
    return pc.fill_null(values, False)


def _show(text: str | None) -> str:
    if text is None:
        return "None"
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "...")


def _int_overflow(text: pa.Array) -> pa.Array:
    """Mask of integer literals (already matching the int pattern) beyond int64."""
    trimmed = pc.utf8_trim_whitespace(text)
    negative = _mask(pc.starts_with(trimmed, "-"))
    digits = pc.replace_substring_regex(trimmed, r"^[-+]?0*", "")
    length = pc.utf8_length(digits)
    limit = pc.if_else(negative, pa.scalar("9223372036854775808"), pa.scalar(_INT64_MAX))
    too_long = pc.greater(length, 19)
    at_edge = pc.and_(pc.equal(length, 19), pc.greater(digits, limit))
    return _mask(pc.or_(too_long, at_edge))


def cast_column(values: pa.Array, kind: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Cast a text column; returns (typed values, mask not parsing, mask out of range)."""
    target = ARROW_TYPES[kind]
    none = _false(len(values))
    if kind == "string":
        return values, none, none
    if kind == "date":
        try:
            # Arrow's cast takes only YYYY-MM-DD dates that exist: a subset of what the
            # check below accepts, giving the same values. Most columns pass whole.
            return pc.cast(values, target), none, none
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some value is padded, another format or no date: the full check
    if kind in ("date", "timestamp"):
        text = pc.utf8_trim_whitespace(values)
        fmt = "%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S"
        parsed = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
        if kind == "timestamp":
            alt = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
            parsed = pc.coalesce(parsed, alt)
        if kind == "date":
            # strptime rolls 2024-02-30 over to March: a date must print back as it was read.
            parsed = pc.if_else(_mask(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), text)),
                                parsed, pa.scalar(None, parsed.type))
        bad = _mask(pc.and_(pc.is_valid(values), pc.is_null(parsed)))
        return parsed.cast(target), bad, none
    try:
        return pc.cast(pc.utf8_trim_whitespace(values), target), none, none
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # some value does not parse: find which, below
    ok = _mask(pc.match_substring_regex(values, _PATTERNS[kind]))
    bad = _mask(pc.and_(pc.is_valid(values), pc.invert(ok)))
    overflow = _int_overflow(pc.if_else(ok, values, "")) if kind == "int64" else none
    cleaned = pc.if_else(pc.or_(bad, overflow), pa.scalar(None, pa.string()), values)
    if kind == "bool":
        typed = pc.is_in(pc.utf8_lower(cleaned), pa.array(["true", "1"]))
        return pc.if_else(pc.is_null(cleaned), pa.scalar(None, pa.bool_()), typed), bad, none
    text = pc.utf8_trim_whitespace(cleaned)
    if kind == "int64":  # the pattern takes a leading '+', Arrow's integer parser does not
        text = pc.replace_substring_regex(text, r"^\+", "")
    return pc.cast(text, target), bad, overflow


@functools.cache
def _a_null_text_parses(kind: str, null_values: tuple[str, ...]) -> bool:
    """Whether some null text would cast to a `kind` value (to a finite one, for float64)."""
    for text in null_values:
        try:
            value = pc.cast(pa.array([text]), ARROW_TYPES[kind])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if kind != "float64" or pc.all(pc.is_finite(value)).as_py():
            return True
    return False


def cast_whole(values: pa.Array, kind: str, null_values: tuple[str, ...]) -> pa.Array | None:
    """The column cast in one step, when that is exactly what the checks would give; None
    when it is not (then the checks run).

    For int64, float64 and date columns: if Arrow's cast takes every text as it
    is, no value was a null text (none of those parses as this kind, or it parses
    to a NaN/inf, refused below), none is out of range or badly formed, and none
    holds a control character (checked on its bytes), so every check below
    passes each value unchanged and casts it with the same parser. Clean columns,
    the common case, skip the null-text lookup, the trimming and the masks.
    """
    if kind not in ("int64", "float64", "date") or values.null_count or \
            _a_null_text_parses(kind, null_values):
        return None
    try:
        typed = pc.cast(values, ARROW_TYPES[kind])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # before the byte scan: the checks scan a refused column themselves
    if _may_hold_control(values):
        return None
    if kind == "float64" and not pc.all(pc.is_finite(typed)).as_py():
        return None  # the checks decide what a NaN or inf is (stages.ingest.params.non_finite)
    return typed


def _may_hold_control(values: pa.Array) -> bool:
    """Whether any byte behind a text column is a control character (the regex then says
    which rows hold one); a scan of the bytes is far cheaper than the regex per value."""
    data = values.buffers()[2]
    if data is None:
        return False
    raw = np.frombuffer(data, np.uint8)
    low = raw[(raw < 0x20) | (raw == 0x7F)]
    return bool(len(low)) and not np.isin(low, (0x09, 0x0A, 0x0D)).all()


class _Verdicts:
    """Collects a reason per rejected row (the first one found) and the union mask."""

    def __init__(self, n: int) -> None:
        self.reasons: dict[int, str] = {}
        self.any = _false(n)

    def add(self, mask: pa.Array, values: pa.Array | None, head: str, tail: str = "") -> None:
        """Reject the rows in `mask`, each with reason head + its value + tail."""
        if not pc.any(mask).as_py():
            return
        where = pc.indices_nonzero(mask)
        if values is None:
            for i in where.to_pylist():
                self.reasons.setdefault(i, head)
        else:
            for i, text in zip(where.to_pylist(), values.take(where).to_pylist(), strict=True):
                self.reasons.setdefault(i, f"{head}{_show(text)}{tail}")
        self.any = pc.or_(self.any, mask)


def validate_batch(batch: pa.RecordBatch, params: IngestParams,
                   ) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Type one batch of text columns; returns (good rows, [(row index, reason)])."""
    nulls = pa.array(params.null_values, pa.string())
    verdicts = _Verdicts(batch.num_rows)
    columns: list[pa.Array] = []
    for name, kind in params.columns.items():
        values = batch.column(name)
        if values.type != pa.string():
            values = values.cast(pa.string())
        whole = cast_whole(values, kind, tuple(params.null_values))
        if whole is not None:
            columns.append(whole)
            continue
        is_null_text = _mask(pc.is_in(values, value_set=nulls))
        values = pc.if_else(is_null_text, pa.scalar(None, pa.string()), values)
        if params.control_chars == "quarantine" and _may_hold_control(values):
            control = _mask(pc.match_substring_regex(values, _CONTROL))
            verdicts.add(control, values, f"column {name!r}: ", " holds a NUL or control "
                         "character (stages.ingest.params.control_chars)")
        typed, bad, overflow = cast_column(values, kind)
        verdicts.add(bad, values, f"column {name!r}: ", f" is not a valid {kind}")
        verdicts.add(overflow, values, f"column {name!r}: ", " is out of the int64 range "
                     "(use float64 or string for it)")
        if kind == "float64":
            typed = _non_finite(name, typed, values, params, verdicts)
        if name in params.required:
            verdicts.add(_mask(pc.is_null(values)), None,
                         f"column {name!r}: required value is empty")
        columns.append(typed)
    table = pa.Table.from_arrays(columns, schema=declared_schema(params))
    if verdicts.reasons:
        table = table.filter(pc.invert(verdicts.any))
    return table, sorted(verdicts.reasons.items())


def _non_finite(name: str, typed: pa.Array, values: pa.Array, params: IngestParams,
                verdicts: _Verdicts) -> pa.Array:
    if params.non_finite == "keep":
        return typed
    mask = _mask(pc.and_(pc.is_valid(typed), pc.invert(pc.is_finite(typed))))
    if params.non_finite == "null":
        return pc.if_else(mask, pa.scalar(None, pa.float64()), typed)
    verdicts.add(mask, values, f"column {name!r}: ", " is not a finite number "
                 "(stages.ingest.params.non_finite)")
    return typed
