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
    def learn(cls, table: pa.Table, exclude: set[str], categorical: list[str]) -> FeatureMap:
        missing = [c for c in categorical if c not in table.column_names]
        if missing:
            raise DataError(f"stages.train.params.categorical: columns {missing} are not in the "
                            f"features table ({table.column_names})")
        features = []
        for f in table.schema:
            if f.name in exclude:
                continue
            if f.name in categorical or any(is_type(f.type) for is_type in NUMERIC):
                features.append(f.name)
        vocab = {}
        for name in categorical:
            values = pc.unique(table.column(name).cast(pa.string())).drop_null()
            vocab[name] = sorted(values.to_pylist())
        return cls(features, vocab)

    def matrix(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """A float64 matrix with one column per feature; missing values are NaN."""
        missing = [c for c in self.features if c not in table.schema.names]
        if missing:
            raise DataError(f"the features table lacks model columns {missing}; rerun features "
                            "with the SQL the model was trained on")
        out = np.empty((table.num_rows, len(self.features)), dtype=np.float64)
        for j, name in enumerate(self.features):
            column = table.column(name)
            if name in self.categorical:
                codes = pc.index_in(column.cast(pa.string()),
                                    value_set=pa.array(self.categorical[name], pa.string()))
                column = codes
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
