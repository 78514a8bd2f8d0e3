"""Turning Arrow tables into the numeric matrix LightGBM sees, the same way in
train and score. Categorical text columns are coded by a vocabulary learned in
train and saved beside the model (never pickled), so score maps them
identically; values unseen in training become missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline.errors import DataError

NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)


@contextmanager
def arrow_data_errors(stage: str) -> Iterator[None]:
    """Arrow's cast and type errors over committed data are the data's fault: exit 2.

    A committed dataset never changes, so the same error would come back on
    every retry.
    """
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{stage}: the features table has values the model cannot use "
                        f"({exc}); fix the column's type in the feature SQL") from None


def is_text(type_: pa.DataType) -> bool:
    """String-like columns (including dictionary-encoded ones) become categorical features."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_)
                or pa.types.is_string_view(type_))


def is_numeric(type_: pa.DataType) -> bool:
    return any(is_type(type_) for is_type in NUMERIC)


@dataclass(frozen=True)
class FeaturePlan:
    """Which columns feed the model, which of them are categorical, and what to tell the user."""

    features: list[str]
    categorical: list[str]
    warnings: list[str]


def plan_features(schema: pa.Schema, exclude: set[str], categorical: list[str],
                  named_exclude: list[str]) -> FeaturePlan:
    """Every column not in `exclude` is a feature: numbers as numbers, text as categories.

    `exclude` holds everything kept out (label, split columns, the spec's
    exclude list); `named_exclude` is the spec's own list, checked for names
    that match nothing. A text column the spec names in no list is used as a
    categorical with a warning, so a forgotten column is visible rather than
    silently dropped; a column of a type the model cannot use (dates, lists)
    is left out with a warning that says what to do.
    """
    missing = [c for c in categorical if c not in schema.names]
    if missing:
        raise DataError(f"stages.train.params.categorical: columns {missing} are not in the "
                        f"features table ({schema.names})")
    warnings = [f"stages.train.params.exclude: {c!r} is not a column of the features table"
                for c in named_exclude if c not in schema.names]
    features, cats = [], []
    for field in schema:
        name = field.name
        if name in exclude:
            continue
        if name in categorical or is_text(field.type):
            if name not in categorical:
                warnings.append(f"column {name!r} (text) is named in no list: used as a "
                                "categorical feature; add it to stages.train.params.exclude "
                                "if it is an id or must not be used")
            features.append(name)
            cats.append(name)
        elif is_numeric(field.type):
            features.append(name)
        else:
            warnings.append(f"column {name!r} of type {field.type} is not used: the model takes "
                            "numbers, booleans and text; derive a number in the feature SQL "
                            "or add it to stages.train.params.exclude")
    if not features:
        raise DataError("the features table has no usable feature column; check "
                        "stages.train.params.exclude and the feature SQL")
    return FeaturePlan(features, cats, warnings)


@dataclass(frozen=True)
class FeatureMap:
    """Which columns feed the model, in order, and how categories are coded."""

    features: list[str]
    categorical: dict[str, list[str]]  # column -> sorted vocabulary

    def matrix(self, table: pa.Table | pa.RecordBatch, out: np.ndarray | None = None
               ) -> np.ndarray:
        """A float32 matrix, one column per feature; missing and unseen values are NaN.

        float32 halves the memory of float64, and LightGBM bins values anyway;
        train and score both use it, so thresholds meet the same numbers.
        """
        missing = [c for c in self.features if c not in table.schema.names]
        if missing:
            raise DataError(f"the features table lacks model columns {missing}; rerun features "
                            "with the SQL the model was trained on")
        if out is None:
            out = np.empty((table.num_rows, len(self.features)), dtype=np.float32)
        for j, name in enumerate(self.features):
            try:
                out[:, j] = self._column(table, name)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise DataError(f"column {name!r} cannot be used as a model feature: {exc}; "
                                "fix its type in the feature SQL") from None
        return out

    def _column(self, table: pa.Table | pa.RecordBatch, name: str) -> np.ndarray:
        column = table.column(name)
        if name in self.categorical:
            column = pc.index_in(column.cast(pa.string()),
                                 value_set=pa.array(self.categorical[name], pa.string()))
        return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))

    def categorical_indices(self) -> list[int]:
        """Positions of the categorical features, as LightGBM's categorical_feature wants."""
        return [i for i, n in enumerate(self.features) if n in self.categorical]

    def to_json(self) -> str:
        """The map as JSON, saved beside the model (never pickled)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureMap:
        """The map saved by `to_json`."""
        data = json.loads(text)
        return cls(data["features"], data["categorical"])
