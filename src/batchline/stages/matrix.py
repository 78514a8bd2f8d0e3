"""Turning Arrow tables into the numeric matrix LightGBM sees, the same way in
train and score. Categorical text columns are coded by a vocabulary learned in
train and saved beside the model (never pickled), so score maps them
identically; values unseen in training become missing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline.errors import DataError

NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


@dataclass(frozen=True)
class FeatureMap:
    """Which columns feed the model, in order, and how categories are coded."""

    features: list[str]
    categorical: dict[str, list[str]]  # column -> sorted vocabulary

    @classmethod
    def from_schema(cls, schema: pa.Schema, exclude: set[str],
                    vocabularies: dict[str, list[str]]) -> FeatureMap:
        """Numeric columns plus the categorical ones, in schema order, minus `exclude`."""
        missing = [c for c in vocabularies if c not in schema.names]
        if missing:
            raise DataError(f"stages.train.params.categorical: columns {missing} are not in the "
                            f"features table ({schema.names})")
        features = [f.name for f in schema if f.name not in exclude and (
            f.name in vocabularies or any(is_type(f.type) for is_type in NUMERIC))]
        return cls(features, vocabularies)

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
            column = table.column(name)
            if name in self.categorical:
                column = pc.index_in(column.cast(pa.string()),
                                     value_set=pa.array(self.categorical[name], pa.string()))
            out[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return out

    def categorical_indices(self) -> list[int]:
        return [i for i, n in enumerate(self.features) if n in self.categorical]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureMap:
        data = json.loads(text)
        return cls(data["features"], data["categorical"])
