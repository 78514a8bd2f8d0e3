"""Typed parameters of each stage, validated as part of the pipeline spec.

Kept apart from the stage code so that validating a spec never imports
LightGBM or DuckDB.
"""

from __future__ import annotations

import codecs
import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from batchline.params_checks import ChecksSpec, ColumnChecks
from batchline.spec_errors import did_you_mean

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
# The column features adds when the spec has `segments:`: each row's segment as
# text, the key train fans out on and score routes by.
SEGMENT_COLUMN = "batchline_segment"
ColumnType = Literal["int64", "float64", "string", "bool", "date", "timestamp"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentsSpec(_Params):
    """One model per segment (hospital, region, product), a global one for the rest."""

    by: str = Field(min_length=1, description="a column of the features table, or a DuckDB "
                    "SQL expression over its columns, whose value names each row's segment")
    min_rows: int = Field(1_000, ge=100, description="labelled rows a segment needs for a "
                          "model of its own; smaller segments (and segments unseen in "
                          "training) are scored by the global model")
    fallback: Literal["global"] = Field("global", description="what scores rows of segments "
                                        "without a model: the global model of the same run")
    max_failed_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="share of segment models that may fail (listed with "
        "their cause) before the train stage fails")


class PromoteSpec(_Params):
    """The promotion gate: when a segment's new model (the challenger) replaces its champion.

    Both are scored on the challenger's own validation rows, in the same run;
    the challenger must pass the absolute checks and beat the champion by
    `min_gain` on `metric`. The decision and its numbers are recorded per segment.
    """

    metric: Literal["auc", "logloss", "rmse", "mae", "r2", "multi_logloss", "accuracy"] = \
        Field("auc", description="compared on the validation rows (auc for binary, rmse for "
              "regression, multi_logloss for multiclass, ...)")
    min_gain: float = Field(0.0, ge=0.0, description="how much better than the champion the "
                            "challenger must be (in the metric's own units)")
    max_calibration_error: float | None = Field(None, gt=0.0, le=1.0, description="binary: "
                                                "the challenger's calibration ECE at most this")
    min_rows: int = Field(0, ge=0, description="validation rows the comparison needs; fewer: "
                          "not promoted (too noisy to judge)")


class _Segmented(_Params):
    """Params of a stage that behaves differently when the spec has `segments:`.

    The spec's top-level `segments:` section is handed to these stages as
    their `segments` param. When it is absent the field is left out of the
    dump, so specs without segments keep their exact cache keys and tasks.
    """

    segments: SegmentsSpec | None = Field(None, description="set from the spec's top-level "
                                          "segments: section")

    @model_serializer(mode="wrap")
    def _without_unset_segments(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in ("segments", "promote"):
                if name in data and data[name] is None:
                    del data[name]
        return data


class IngestParams(_Params):
    """Where raw data comes from, how to read it, and what it must look like."""

    source: str = Field(description="file, folder or glob URI (local path or s3://) of raw data")
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        None, description="default: from the file extension (.csv, .csv.gz, .jsonl, .jsonl.gz, "
        ".parquet)")
    columns: dict[str, ColumnType] = Field(min_length=1)
    required: list[str] = Field(default_factory=list,
                                description="columns that may not be empty")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    batch_rows: int = Field(200_000, ge=1_000)
    null_values: list[str] = Field(
        # What R, pandas, SQL dumps and spreadsheets write for a missing value.
        default_factory=lambda: ["", "NA", "N/A", "NULL", "null", "NaN"],
        description="cell texts that mean 'missing' in every column")
    delimiter: str = Field(",", description="CSV field separator, one character")
    quote_char: str | None = Field('"', description="CSV quote character; null: no quoting")
    encoding: str | None = Field(None, description="text encoding (e.g. latin-1, cp1252, "
                                 "utf-16); default UTF-8")
    max_quoted_lines: int = Field(
        50, ge=1, description="a quoted CSV field spanning more lines is a runaway quote: its "
        "first line is quarantined and the lines after it are read as rows")
    max_record_bytes: int = Field(
        16 << 20, ge=1024, le=1 << 30, description="longest record (line, or quoted multi-line "
        "row) read; longer ones are quarantined. Memory grows with it")
    non_finite: Literal["quarantine", "null", "keep"] = Field(
        "quarantine", description="what to do with inf, -inf and nan in float64 columns")
    control_chars: Literal["quarantine", "keep"] = Field(
        "quarantine", description="what to do with NUL and other control characters in values")
    checks: ChecksSpec | None = Field(
        None, description="data-quality checks of the committed rows: per column (range, "
        "allowed, max_null_fraction, unique, max_age_days) and of the row count (min, max, "
        "vs_previous); see docs/monitoring.md")

    @model_serializer(mode="wrap")
    def _without_unset_checks(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Specs without checks keep their exact cache keys and tasks.
        data = handler(self)
        if isinstance(data, dict) and data.get("checks", 0) is None:
            del data["checks"]
        return data

    @model_validator(mode="after")
    def _checks_fit_columns(self) -> IngestParams:
        # Raised as a ValidationError of its own so that each problem carries its own
        # path (stages.ingest.params.checks.columns.age.range), as pydantic's do.
        if self.checks is None:
            return self
        problems = []
        for column, where, checks in self.checks.column_checks():
            loc = ("checks", *where.split("."))
            kind = self.columns.get(column)
            if kind is None:
                problems.append((loc, f"column {column!r} is not declared in columns"
                                      f"{did_you_mean(column, self.columns)} (declared: "
                                      f"{', '.join(self.columns)})"))
                continue
            problems += [((*loc, name), text) for name, text in _check_problems(column, kind,
                                                                                checks)]
        if problems:
            raise ValidationError.from_exception_data("IngestParams", [
                InitErrorDetails(type=PydanticCustomError("check_spec", "{text}", {"text": text}),
                                 loc=loc,
                                 input=None) for loc, text in problems])
        return self

    @field_validator("required")
    @classmethod
    def _required_declared(cls, value: list[str], info: object) -> list[str]:
        data = getattr(info, "data", {})
        if "columns" not in data:
            return value  # columns is itself wrong and reported; do not guess at it
        columns = data["columns"] or {}
        missing = [c for c in value if c not in columns]
        if missing:
            raise ValueError(f"required columns {missing} are not declared in columns")
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char_delimiter(cls, value: str) -> str:
        # Arrow's CSV reader takes ASCII separators only.
        if len(value) != 1 or value in "\r\n" or not value.isascii():
            raise ValueError(f"delimiter must be one ASCII character other than a newline, "
                             f"not {value!r}")
        return value

    @field_validator("quote_char")
    @classmethod
    def _one_char_quote(cls, value: str | None, info: object) -> str | None:
        if value is not None and (len(value) != 1 or value in "\r\n" or not value.isascii()
                                  or value == getattr(info, "data", {}).get("delimiter")):
            raise ValueError(f"quote_char must be one ASCII character, not a newline nor the "
                             f"delimiter, or null; not {value!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}; use a Python codec name such "
                                 "as utf-8, latin-1, cp1252 or utf-16") from None
        return value


def _check_problems(column: str, kind: str, checks: ColumnChecks) -> list[tuple[str, str]]:
    """(check name, problem) for each check that does not fit the column's type."""
    problems = []
    if checks.range is not None:
        bounds = [b for b in checks.range if b is not None]
        if kind in ("int64", "float64"):
            fits = all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            wanted = "numbers"
        elif kind == "date":
            fits = all(type(b) is date for b in bounds)
            wanted = "dates (2024-01-31)"
        elif kind == "timestamp":
            fits = all(isinstance(b, date) for b in bounds)
            wanted = "dates or timestamps (2024-01-31 or 2024-01-31T08:00:00)"
        else:
            fits, wanted = False, ""
        if not wanted:
            problems.append(("range", f"column {column!r} is {kind}; a range applies to "
                                      "numbers, dates and timestamps (use allowed for values)"))
        elif not fits:
            problems.append(("range", f"column {column!r} is {kind}; its bounds must be "
                                      f"{wanted}, not {list(checks.range)}"))
    if checks.allowed is not None:
        wanted_type, word = {"string": (str, "text"), "int64": (int, "a whole number"),
                             "bool": (bool, "true or false")}.get(kind, (None, ""))
        if wanted_type is None:
            problems.append(("allowed", f"column {column!r} is {kind}; allowed applies to "
                                        "string, int64 and bool columns (use range)"))
        elif any(type(v) is not wanted_type for v in checks.allowed):
            hint = "; quote values YAML reads as true/false or numbers ('yes', '01')" \
                if kind == "string" else ""
            problems.append(("allowed", f"column {column!r} is {kind}; every allowed value "
                                        f"must be {word}, not {checks.allowed}{hint}"))
    if checks.max_age_days is not None and kind not in ("date", "timestamp"):
        problems.append(("max_age_days", f"column {column!r} is {kind}; max_age_days applies "
                                         "to date and timestamp columns"))
    return problems


class FeaturesParams(_Segmented):
    """Feature SQL over the ingested dataset, which the query sees as `table`.

    The ingested dataset is also visible under its own dataset name
    (`encounters` in the demo), so specs written before `table` existed keep
    working.
    """

    sql: str = Field(min_length=1, description="exactly one DuckDB SELECT over `table`")
    table: str = Field("input", pattern=_IDENT,
                       description="the name the SQL reads the ingested dataset under")
    order_by: list[str] | None = Field(
        None, description="columns that make the output order deterministic (equal reruns "
        "give equal bytes); when unset, rows are ordered by all their columns")
    memory_limit: str = Field("512MB", pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")
    threads: int = Field(2, ge=1, le=64)

    @field_validator("order_by", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        # `order_by: encounter_id` (today's specs) and `order_by: [a, b]` both work.
        return [value] if isinstance(value, str) else value

    @field_validator("order_by")
    @classmethod
    def _identifiers(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one column, or leave order_by out")
            bad = [c for c in value if not re.match(_IDENT, c)]
            if bad:
                raise ValueError(f"{bad} are not column names (letters, digits, '_')")
        return value


class TimeSplit(_Params):
    """Validation rows are the most recent: a share of them, or those from a cutoff on."""

    kind: Literal["time"] = "time"
    column: str
    fraction: float | None = Field(None, gt=0.0, lt=1.0,
                                   description="share of labelled rows held out (most recent)")
    cutoff: str | None = Field(None, description="rows with column >= cutoff are held out "
                               "(a date, timestamp or number, as text)")

    @model_validator(mode="after")
    def _fraction_or_cutoff(self) -> TimeSplit:
        if (self.fraction is None) == (self.cutoff is None):
            raise ValueError("give exactly one of fraction or cutoff")
        return self


class RandomSplit(_Params):
    """A seeded random share of the labelled rows is held out."""

    kind: Literal["random"] = "random"
    fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 7


class GroupSplit(_Params):
    """Whole groups (e.g. every row of one patient) are held out, a seeded share of rows."""

    kind: Literal["group"] = "group"
    column: str
    fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 7


Split = Annotated[TimeSplit | RandomSplit | GroupSplit, Field(discriminator="kind")]


# The metrics a search may choose by, per objective; the first is the default.
SEARCH_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "logloss"),
    "regression": ("rmse", "mae", "r2"),
    "multiclass": ("multi_logloss", "accuracy"),
}


class SearchParams(_Params):
    """A search over LightGBM's hyperparameters (Optuna TPE) plus a linear baseline.

    `max_trials` is the deterministic bound: with it reached before
    `budget_seconds`, the same data and seed give the same winner and the
    same model bytes. `budget_seconds` is wall time, so on a busy machine
    it stops at a different trial from run to run; the leaderboard records
    which of the two stopped the search.
    """

    budget_seconds: float = Field(300.0, gt=0.0, le=7 * 24 * 3600.0,
                                  description="wall-time budget of the whole search, its "
                                  "final fits included (seconds)")
    max_trials: int = Field(30, ge=1, le=10_000,
                            description="LightGBM candidates tried, the spec's own params first")
    metric: Literal["auc", "logloss", "rmse", "mae", "r2", "multi_logloss", "accuracy"] | None = \
        Field(None, description="what the winner is chosen by, on the selection slice; "
              "default: auc (binary), rmse (regression), multi_logloss (multiclass)")
    seed: int = Field(7, description="seed of the sampler (TPE)")
    selection_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of the fitting rows held out (the same way as "
        "the split) to choose the winner on; no candidate fits or stops on them")
    linear_baseline: bool = Field(True, description="also fit a regularised linear model "
                                  "(binary and regression); it is the model if it is within "
                                  "one standard error of the best candidate on the selection "
                                  "slice")


class TrainParams(_Segmented):
    """What to predict, how to hold rows out, which columns mean what, and LightGBM's knobs.

    Every numeric and boolean column is a feature, and so is every string
    column (as a categorical) unless it is in `exclude`.
    """

    promote: PromoteSpec | None = Field(None, description="set from the spec's top-level "
                                        "promote: section (a fleet's promotion gate)")

    objective: Literal["binary", "regression", "multiclass"] = "binary"
    label: str
    split: Split | None = Field(None, description="how validation rows are held out")
    time_column: str | None = Field(None, description="shorthand for split: {kind: time, "
                                    "column: ..., fraction: valid_fraction}")
    valid_fraction: float = Field(0.2, gt=0.0, lt=1.0,
                                  description="held-out share with the time_column shorthand")
    early_stopping_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of the training side carved off (the same way "
        "as the split) to decide when to stop; 0 trains all num_boost_round rounds")
    exclude: list[str] = Field(default_factory=list, description="ids and other non-features")
    categorical: list[str] = Field(default_factory=list,
                                   description="numeric columns to treat as categories too; "
                                   "string columns are categorical anyway")
    num_leaves: int = Field(31, ge=2, le=131072)
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_boost_round: int = Field(500, ge=1, le=100_000)
    early_stopping_rounds: int = Field(30, ge=1)
    min_data_in_leaf: int = Field(100, ge=1)
    feature_fraction: float = Field(0.9, gt=0.0, le=1.0)
    num_threads: int = Field(2, ge=1, le=256)
    seed: int = 7
    calibration_bins: int = Field(10, ge=2, le=100)
    lightgbm: dict[str, Any] = Field(default_factory=dict,
                                     description="further LightGBM parameters, by LightGBM name")
    search: SearchParams | None = Field(
        None, description="search LightGBM's hyperparameters within a budget; the winner, "
        "chosen on its own slice, is the model")

    @model_validator(mode="after")
    def _one_split(self) -> TrainParams:
        if self.split is not None and self.time_column is not None:
            raise ValueError("give split or time_column, not both")
        if self.split is None and self.time_column is None:
            raise ValueError("say how to hold out validation rows: split: {kind: time, column: "
                             "..., fraction: 0.2} (or kind: random, or kind: group)")
        if self.search is not None and self.search.metric is not None and \
                self.search.metric not in SEARCH_METRICS[self.objective]:
            raise ValueError(f"search.metric: {self.search.metric!r} does not fit objective "
                             f"{self.objective}; use one of "
                             f"{', '.join(SEARCH_METRICS[self.objective])}")
        return self

    @field_validator("lightgbm")
    @classmethod
    def _known_lightgbm_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        # LightGBM knows its own parameter names (its C library lists them);
        # when it is installed here the spec is checked at validation time,
        # otherwise the train stage checks at start (a launcher image need
        # not carry LightGBM).
        try:
            from batchline.stages.lgb_params import lightgbm_param_problems
        except (ImportError, OSError):  # OSError: LightGBM present but its library is not
            return value
        problems = lightgbm_param_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def search_metric(self) -> str:
        """The metric the search chooses by: the spec's, else the objective's first."""
        assert self.search is not None
        return self.search.metric or SEARCH_METRICS[self.objective][0]

    @property
    def effective_split(self) -> TimeSplit | RandomSplit | GroupSplit:
        """The split to use, with the `time_column` shorthand expanded."""
        if self.split is not None:
            return self.split
        assert self.time_column is not None  # guaranteed by _one_split
        return TimeSplit(column=self.time_column, fraction=self.valid_fraction)


class SqlPopulation(_Params):
    """Rows of the features table for which a DuckDB SQL predicate holds."""

    where: str = Field(min_length=1, description="a boolean SQL expression over the "
                       "features table's columns, e.g. \"discharge_date >= '2024-12-01'\"")


class SourcePopulation(_Params):
    """A separate Parquet dataset (file or folder URI) with the model's feature columns."""

    source: str = Field(min_length=1)


class DriftSpec(_Params):
    """Drift of the scored population from the model's training rows (PSI per feature and
    for the predictions, against the profile train stores beside the model)."""

    enabled: bool = Field(True, description="false skips the histograms (and their cost)")
    warn: float = Field(0.1, gt=0.0, description="PSI from which a shift is moderate")
    alert: float = Field(0.25, gt=0.0, description="PSI above which a shift is major")
    min_rows: int = Field(100, ge=1, description="scored rows a model needs before its "
                          "drift is judged (fewer: PSI recorded, no band)")

    @model_validator(mode="after")
    def _ordered(self) -> DriftSpec:
        if self.alert < self.warn:
            raise ValueError(f"alert ({self.alert}) must be at least warn ({self.warn})")
        return self


class ScoreParams(_Segmented):
    """Which rows to score (`population`) and which columns identify them."""

    id_columns: list[str] = Field(min_length=1)
    population: Literal["unlabelled", "all"] | SqlPopulation | SourcePopulation = Field(
        "unlabelled", description="unlabelled (rows whose label is empty), all, "
        "{where: <SQL predicate>} or {source: <parquet URI>}")
    allow_empty: bool = Field(True, description="when false, an empty population fails the "
                              "stage (exit 2) instead of committing 0 predictions with a warning")
    batch_rows: int = Field(100_000, ge=1_000)
    num_threads: int = Field(2, ge=1, le=256)
    drift: DriftSpec = Field(default_factory=DriftSpec, description="PSI of every feature "
                             "and of the predictions against the training rows")


class MonitorParams(_Params):
    """Outcomes that have matured since, joined to earlier runs' predictions by id."""

    label: str = Field(pattern=_IDENT, description="the outcome column of the ingested data "
                       "(a 0/1 label)")
    id_columns: list[Annotated[str, Field(pattern=_IDENT)]] = Field(
        min_length=1, description="the columns predictions and outcomes are joined on "
        "(score's id_columns)")
    time_column: str | None = Field(None, pattern=_IDENT, description="a date column of the "
                                    "outcomes; accuracy is reported per month of it")
    segment_column: str | None = Field(None, pattern=_IDENT, description="a column of the "
                                       "outcomes to "
                                       "report accuracy per value of (a fleet's predictions "
                                       "name their segment already)")
    metric: Literal["auc", "logloss", "calibration_ece"] = Field(
        "auc", description="the figure compared with the model's own at training")
    tolerance: float = Field(0.05, gt=0.0, description="how much worse than at training the "
                             "metric may be before the model is marked degraded")
    min_labelled: int = Field(200, ge=10, description="matured outcomes a month, segment or "
                              "run needs before it is judged (fewer: recorded, not judged)")
    max_runs: int = Field(24, ge=1, le=1000, description="how many of the most recent earlier "
                          "scoring runs of the pipeline to join")
    calibration_bins: int = Field(10, ge=2, le=100)

    @model_validator(mode="after")
    def _distinct_columns(self) -> MonitorParams:
        if self.label in self.id_columns:
            raise ValueError(f"label {self.label!r} is also one of id_columns")
        return self
