"""The data-quality checks a spec declares on ingest's typed table (`stages.ingest.params.checks`).

    checks:
      columns:
        age: {range: [0, 120], max_null_fraction: 0.0}
        sex: {allowed: [F, M], on_fail: warn}
        encounter_id: {unique: true}
        discharge_date: {max_age_days: 3, on_fail: warn}
        hemoglobin:                       # a list: checks of one column that fail differently
          - {range: [1, 25]}
          - {max_null_fraction: 0.05, on_fail: warn}
      rows: {min: 1000, vs_previous: [0.5, 2.0], on_fail: warn}

Every mapping carries its own `on_fail`, `fail` by default: a check written
in a spec is a promise about the data, and a default of `warn` would let a
broken feed through unnoticed; `warn` is chosen, deliberately, per check.
Whether a check fits its column's type is judged by IngestParams, which knows
the columns; here each mapping is checked on its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

OnFail = Literal["warn", "fail"]
# A bound of `range`: a number, or a date / timestamp (YAML 2024-01-31); null leaves that
# side open.
Bound = int | float | date | datetime | None
COLUMN_CHECKS = ("range", "allowed", "max_null_fraction", "unique", "max_age_days")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnChecks(_Model):
    """Checks of one column's committed values; nulls count only for max_null_fraction."""

    range: tuple[Bound, Bound] | None = Field(
        None, description="[min, max] every value must lie in (inclusive); null: open side")
    allowed: list[str | int | bool] | None = Field(
        None, min_length=1, description="the values the column may hold (text, whole numbers "
        "or true/false, as the column is typed)")
    max_null_fraction: float | None = Field(None, ge=0.0, le=1.0,
                                            description="share of rows that may be empty")
    unique: bool = Field(False, description="no value may occur twice (nulls aside)")
    max_age_days: int | None = Field(
        None, ge=0, description="a date or timestamp column: its newest value at most this "
        "many days before the run's date")
    on_fail: OnFail = Field("fail", description="fail: the stage fails (exit 2) and commits "
                            "nothing; warn: recorded and shown as a warning")

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[Bound, Bound] | None) -> tuple[Bound, Bound] | None:
        if value is None:
            return value
        low, high = value
        if low is None and high is None:
            raise ValueError("give at least one bound ([min, null] or [null, max])")
        if low is not None and high is not None:
            if type(low) is not type(high) and \
                    not all(isinstance(b, int | float) for b in (low, high)):
                raise ValueError(f"both bounds must be of one kind, not {low!r} and {high!r}")
            if low > high:  # type: ignore[operator]
                raise ValueError(f"the minimum {low} is above the maximum {high}")
        return value

    @model_validator(mode="after")
    def _something_checked(self) -> ColumnChecks:
        if not self.declared():
            raise ValueError(f"declares no check; give one or more of {', '.join(COLUMN_CHECKS)}")
        return self

    def declared(self) -> list[str]:
        """The names of the checks this mapping declares, in a fixed order."""
        return [name for name in COLUMN_CHECKS
                if getattr(self, name) not in (None, False)]


class RowChecks(_Model):
    """Bounds on the rows ingest commits (quarantined rows are not counted)."""

    min: int | None = Field(None, ge=0, description="fewest rows")
    max: int | None = Field(None, ge=0, description="most rows")
    vs_previous: tuple[float, float] | None = Field(
        None, description="[low, high]: rows / the previous run's rows must lie in it "
        "(the previous run of this pipeline whose ingest committed)")
    on_fail: OnFail = Field("fail", description="fail: the stage fails (exit 2) and commits "
                            "nothing; warn: recorded and shown as a warning")

    @field_validator("max")
    @classmethod
    def _max_from_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min")
        if value is not None and low is not None and low > value:
            raise ValueError(f"max ({value}) is below min ({low})")
        return value

    @field_validator("vs_previous")
    @classmethod
    def _ratios(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None:
            low, high = value
            if not 0 <= low <= high or high <= 0:
                raise ValueError(f"[{low}, {high}] must be ratios with 0 <= low <= high and "
                                 "high > 0, e.g. [0.5, 2.0]")
        return value

    @model_validator(mode="after")
    def _something_checked(self) -> RowChecks:
        if self.min is None and self.max is None and self.vs_previous is None:
            raise ValueError("declares no check; give min, max or vs_previous")
        return self


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def _path(base: str, i: int, entries: list[Any]) -> str:
    # A column's single mapping is addressed as written: columns.age, not columns.age.0.
    return f"{base}.{i}" if len(entries) > 1 else base


def _single_mappings(data: Any) -> set[tuple[str, ...]]:
    """Where the raw checks hold one mapping, not a list: (columns, name) or (rows,)."""
    if not isinstance(data, dict):
        return set()
    columns = data.get("columns")
    out: set[tuple[str, ...]] = {("columns", str(k)) for k, v in columns.items()
                                 if isinstance(v, dict)} if isinstance(columns, dict) else set()
    if isinstance(data.get("rows"), dict):
        out.add(("rows",))
    return out


class ChecksSpec(_Model):
    """Per column and for the row count: a mapping each, or a list of mappings (checks of
    one thing that differ in on_fail). Stored as lists."""

    columns: dict[str, list[ColumnChecks]] = Field(
        default_factory=dict, description="column name -> its checks")
    rows: list[RowChecks] = Field(default_factory=list, description="row count bounds")

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_listed(cls, value: Any) -> Any:
        return {k: _listed(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("rows", mode="before")
    @classmethod
    def _rows_listed(cls, value: Any) -> Any:
        return [] if value is None else _listed(value)

    @model_validator(mode="wrap")
    @classmethod
    def _paths_as_written(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Errors inside a single mapping get its path as written (columns.age.range)."""
        try:
            return handler(data)
        except ValidationError as exc:
            single = _single_mappings(data)
            errors = []
            for err in exc.errors():
                loc = tuple(err["loc"])
                for head in single:
                    if loc[:len(head)] == head and loc[len(head):len(head) + 1] == (0,):
                        loc = head + loc[len(head) + 1:]
                errors.append(InitErrorDetails(type=err["type"], loc=loc, input=err["input"],
                                               ctx=err.get("ctx", {})))
            raise ValidationError.from_exception_data(exc.title, errors) from None

    def column_checks(self) -> Iterator[tuple[str, str, ColumnChecks]]:
        """(column, its path under `checks`, checks) for every mapping, in spec order."""
        for column, entries in self.columns.items():
            for i, one in enumerate(entries):
                yield column, _path(f"columns.{column}", i, entries), one

    def row_checks(self) -> Iterator[tuple[str, RowChecks]]:
        """(path under `checks`, checks) for every row-count mapping."""
        for i, one in enumerate(self.rows):
            yield _path("rows", i, self.rows), one


def judged_by_date(params: Mapping[str, Any]) -> bool:
    """Whether ingest params (as dumped into a task) hold a freshness check: its verdict
    depends on the run's day, not only on the data, so the day joins the cache key."""
    columns = (params.get("checks") or {}).get("columns") or {}
    return any(one.get("max_age_days") is not None
               for entries in columns.values() for one in entries)
