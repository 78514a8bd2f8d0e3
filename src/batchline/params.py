"""Typed parameters of each stage, validated as part of the pipeline spec.

Kept apart from the stage code so that validating a spec never imports
LightGBM or DuckDB.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ColumnType = Literal["int64", "float64", "string", "bool", "date", "timestamp"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(_Params):
    """Where raw data comes from and what it must look like."""

    source: str = Field(description="file or folder URI (local path or s3://) of raw data")
    format: Literal["csv", "jsonl", "parquet"] = "csv"
    columns: dict[str, ColumnType] = Field(min_length=1)
    required: list[str] = Field(default_factory=list,
                                description="columns that may not be empty")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    batch_rows: int = Field(200_000, ge=1_000)

    @field_validator("required")
    @classmethod
    def _required_declared(cls, value: list[str], info: object) -> list[str]:
        columns = getattr(info, "data", {}).get("columns") or {}
        missing = [c for c in value if c not in columns]
        if missing:
            raise ValueError(f"required columns {missing} are not declared in columns")
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
