"""Checking and coding the label column for each objective, before any training.

A label of the wrong type or with unexpected values is the user's data, not
a passing fault: it raises DataError (exit 2, never retried) naming the
column and showing a few of the offending values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline.errors import DataError

MAX_CLASSES = 200
_FIELD = "stages.train.params.label"


@dataclass(frozen=True)
class Labels:
    """Label values as LightGBM wants them (0/1, numbers, or class indices) and the classes."""

    y: np.ndarray  # float32, one per labelled row in scan order
    classes: list[Any] | None  # multiclass: the label value of each class index


def _examples(values: pa.Array | pa.ChunkedArray, limit: int = 5) -> list[Any]:
    return pc.unique(values).drop_null().slice(0, limit).to_pylist()


def check_label_type(name: str, type_: pa.DataType, objective: str) -> None:
    """Refuse a label column whose type cannot hold the objective's values."""
    numeric = pa.types.is_integer(type_) or pa.types.is_floating(type_) or \
        pa.types.is_boolean(type_) or pa.types.is_decimal(type_)
    text = pa.types.is_string(type_) or pa.types.is_large_string(type_)
    if objective == "multiclass":
        ok = pa.types.is_integer(type_) or pa.types.is_boolean(type_) or text
        need = "integer or text classes"
    elif objective == "regression":
        ok, need = numeric and not pa.types.is_boolean(type_), "numbers"
    else:
        ok, need = numeric, "0/1 numbers"
    if not ok:
        hint = {"binary": "; map it to 0/1 in the feature SQL (CASE WHEN ... THEN 1 ELSE 0 END) "
                          "or use objective: multiclass",
                "regression": "; cast it to a number in the feature SQL",
                "multiclass": "; cast it to an integer or text in the feature SQL"}[objective]
        raise DataError(f"{_FIELD}: column {name!r} has type {type_}, but objective {objective} "
                        f"needs {need}{hint}")


def code_labels(name: str, values: pa.ChunkedArray, objective: str) -> Labels:
    """The labelled rows' values checked and coded for `objective`."""
    if objective == "multiclass":
        return _multiclass(name, values)
    try:
        y = np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{_FIELD}: column {name!r} cannot be read as numbers: {exc}") from None
    if objective == "binary":
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            examples = sorted(set(y[bad][:1000].tolist()))[:5]
            raise DataError(f"{_FIELD}: column {name!r} must hold only 0 and 1 for objective "
                            f"binary; {int(bad.sum())} rows hold other values, e.g. {examples}; "
                            "use objective: multiclass or regression, or map it in the feature "
                            "SQL")
    elif not np.isfinite(y).all():
        n_bad = int((~np.isfinite(y)).sum())
        raise DataError(f"{_FIELD}: column {name!r} has {n_bad} labelled rows that are NaN or "
                        "infinite; filter them in the feature SQL")
    return Labels(y.astype(np.float32), None)


def _multiclass(name: str, values: pa.ChunkedArray) -> Labels:
    distinct = pc.unique(values)
    distinct = distinct.take(pc.array_sort_indices(distinct))
    if len(distinct) < 2:
        raise DataError(f"{_FIELD}: column {name!r} holds one class only "
                        f"({distinct.to_pylist()}); multiclass needs at least two")
    if len(distinct) > MAX_CLASSES:
        raise DataError(f"{_FIELD}: column {name!r} holds {len(distinct)} classes (e.g. "
                        f"{_examples(values)}); multiclass takes at most {MAX_CLASSES}: group "
                        "rare classes in the feature SQL or use objective: regression")
    codes = pc.index_in(values, value_set=distinct)
    return Labels(np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.float32),
                  distinct.to_pylist())
