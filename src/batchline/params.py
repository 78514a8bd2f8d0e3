"""Typed parameters of each stage, validated as part of the pipeline spec.

Kept apart from the stage code so that validating a spec never imports
LightGBM or DuckDB.
"""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ColumnType = Literal["int64", "float64", "string", "bool", "date", "timestamp"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @field_validator("required")
    @classmethod
    def _required_declared(cls, value: list[str], info: object) -> list[str]:
        columns = getattr(info, "data", {}).get("columns") or {}
        missing = [c for c in value if c not in columns]
        if missing:
            raise ValueError(f"required columns {missing} are not declared in columns")
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char_delimiter(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n":
            raise ValueError(f"delimiter must be one character other than a newline, "
                             f"not {value!r}")
        return value

    @field_validator("quote_char")
    @classmethod
    def _one_char_quote(cls, value: str | None, info: object) -> str | None:
        if value is not None and (len(value) != 1 or value in "\r\n"
                                  or value == getattr(info, "data", {}).get("delimiter")):
            raise ValueError(f"quote_char must be one character, not a newline nor the "
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


class FeaturesParams(_Params):
    """Feature SQL over the ingested table, which the query sees as `encounters`."""

    sql: str = Field(min_length=1, description="one DuckDB SELECT over `encounters`")
    order_by: str = Field("encounter_id", description="column that makes the output order "
                          "deterministic (equal reruns give equal bytes)")
    memory_limit: str = Field("512MB", pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")
    threads: int = Field(2, ge=1, le=64)


class TrainParams(_Params):
    """Which columns mean what, and LightGBM's knobs."""

    label: str
    time_column: str = Field(description="orders rows for the time-based validation split")
    exclude: list[str] = Field(default_factory=list, description="ids and other non-features")
    categorical: list[str] = Field(default_factory=list)
    num_leaves: int = Field(31, ge=2, le=131072)
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_boost_round: int = Field(500, ge=1, le=100_000)
    early_stopping_rounds: int = Field(30, ge=1)
    min_data_in_leaf: int = Field(100, ge=1)
    feature_fraction: float = Field(0.9, gt=0.0, le=1.0)
    valid_fraction: float = Field(0.2, gt=0.0, lt=1.0,
                                  description="most recent share of labelled rows held out")
    num_threads: int = Field(2, ge=1, le=256)
    seed: int = 7
    calibration_bins: int = Field(10, ge=2, le=100)


class ScoreParams(_Params):
    """The population is every row of the features table whose label is empty."""

    id_columns: list[str] = Field(min_length=1)
    batch_rows: int = Field(100_000, ge=1_000)
    num_threads: int = Field(2, ge=1, le=256)


PARAMS_BY_STAGE: dict[str, type[_Params]] = {
    "ingest": IngestParams,
    "features": FeaturesParams,
    "train": TrainParams,
    "score": ScoreParams,
}
