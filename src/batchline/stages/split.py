"""Holding rows out: validation rows, then an early-stopping slice of the training side.

Pure functions over one key per labelled row (times as sortable numbers,
group codes, or nothing for a random split), returning boolean masks plus a
report of the chosen cut and the real fractions, so the model card says
exactly what was held out. Rows that share a time value, or a group, always
land on the same side: the cut is chosen among the distinct values so that
the real fraction is the nearest achievable to the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchline.errors import DataError, SpecError
from batchline.params import GroupSplit, RandomSplit, TimeSplit

SplitSpec = TimeSplit | RandomSplit | GroupSplit
FIT, EARLY_STOPPING, VALID = 0, 1, 2
# A search's selection slice: carved from the fitting rows only when a search
# is asked for, so a spec without one sees the three roles above unchanged.
SELECTION = 3
# Where each role's rows sit in the training matrix: fitting rows, then the
# selection rows (so fit + selection stays one block to refit on), then
# early-stopping rows, then validation rows.
MATRIX_RANK = np.array([0, 2, 3, 1], dtype=np.int8)


@dataclass(frozen=True)
class Roles:
    """Each labelled row's role (FIT, EARLY_STOPPING or VALID) and what was chosen."""

    roles: np.ndarray  # int8, one per labelled row in scan order
    report: dict[str, Any]

    def count(self, role: int) -> int:
        """How many rows have `role`."""
        return int((self.roles == role).sum())


def time_keys(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Time values as float64 numbers that sort like the times (dates, timestamps, numbers)."""
    if pa.types.is_timestamp(values.type):
        values = values.cast(pa.int64())
    elif pa.types.is_date(values.type):
        values = values.cast(pa.date32()).cast(pa.int32())
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"split column has type {values.type}; a time split needs a date, a "
                        "timestamp or a number: set stages.train.params.split.column")
    return np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False))


def key_to_text(key: float, type_: pa.DataType) -> str:
    """A time key back in the column's own terms, for the report (e.g. '2024-03-01')."""
    if pa.types.is_timestamp(type_):
        return str(pa.array([int(key)], pa.int64()).cast(type_)[0])
    if pa.types.is_date(type_):
        return str(pa.array([int(key)], pa.int32()).cast(pa.date32())[0])
    return repr(int(key)) if float(key).is_integer() else repr(float(key))


def cutoff_key(cutoff: str, type_: pa.DataType) -> float:
    """The spec's cutoff text read as the time column's type, as a time key."""
    try:
        value = pa.array([cutoff]).cast(pa.float64() if not (
            pa.types.is_date(type_) or pa.types.is_timestamp(type_)) else type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SpecError(f"stages.train.params.split.cutoff: {cutoff!r} cannot be read as "
                        f"{type_} ({exc}); write it like the column's values") from None
    return float(time_keys(value)[0])


def nearest_cut(keys: np.ndarray, fraction: float, what: str) -> float:
    """The distinct key value c for which the share of keys >= c is nearest `fraction`.

    Both sides keep at least one value, so ties never straddle the cut.
    """
    values, counts = np.unique(keys, return_counts=True)
    if len(values) < 2:
        raise DataError(f"{what}: every row shares one value, so no rows can be held out by "
                        "time; use split kind random or group")
    at_or_after = np.cumsum(counts[::-1])[::-1] / len(keys)  # share of rows >= values[i]
    best = 1 + int(np.argmin(np.abs(at_or_after[1:] - fraction)))
    return float(values[best])


def group_codes(groups: pa.ChunkedArray) -> np.ndarray:
    """Each row's group as an index into the sorted distinct values (order-independent)."""
    if groups.null_count:
        raise DataError(f"stages.train.params.split.column: {groups.null_count} labelled rows "
                        "have no group value; fill or filter them in the feature SQL")
    distinct = pc.unique(groups)
    distinct = distinct.take(pc.array_sort_indices(distinct))
    return np.asarray(pc.index_in(groups, value_set=distinct).to_numpy(zero_copy_only=False))


def hold_out(spec: SplitSpec, keys: np.ndarray | None, fraction: float, seed: int,
             what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A mask of the rows to hold out (about `fraction` of them) and the chosen cut."""
    n = len(keys) if keys is not None else 0
    if isinstance(spec, TimeSplit):
        assert keys is not None
        cut = nearest_cut(keys, fraction, what)
        return keys >= cut, {"cut": cut}
    rng = np.random.default_rng(seed)
    if isinstance(spec, RandomSplit):
        assert keys is not None  # row positions
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:max(1, min(n - 1, round(n * fraction)))]] = True
        return mask, {}
    assert keys is not None
    distinct, codes = np.unique(keys, return_inverse=True)
    if len(distinct) < 2:
        raise DataError(f"{what}: every row belongs to one group, so none can be held out; use "
                        "split kind time or random")
    order = rng.permutation(len(distinct))
    sizes = np.bincount(codes, minlength=len(distinct))[order]
    taken = int(np.clip(np.searchsorted(np.cumsum(sizes), fraction * n, side="right"),
                        1, len(distinct) - 1))
    held = np.zeros(len(distinct), dtype=bool)
    held[order[:taken]] = True
    return held[codes], {"groups_held_out": taken, "groups": len(distinct)}


def assign_roles(spec: SplitSpec, keys: np.ndarray, early_stopping_fraction: float,
                 seed: int, time_type: pa.DataType | None = None,
                 cutoff: float | None = None, selection_fraction: float = 0.0) -> Roles:
    """Validation rows first, then the early-stopping slice carved from the rest the same way.

    With `selection_fraction` > 0 (a search), a selection slice is then carved
    the same way from the fitting rows that remain.
    """
    n = len(keys)
    if cutoff is not None:
        valid, chosen = keys >= cutoff, {"cut": cutoff}
        if valid.all() or not valid.any():
            raise DataError(f"stages.train.params.split.cutoff: puts "
                            f"{'all' if valid.all() else 'no'} labelled rows on the validation "
                            "side; choose a cutoff inside the data's time range")
    else:
        fraction = spec.fraction
        assert fraction is not None
        valid, chosen = hold_out(spec, keys, fraction, seed, "stages.train.params.split")
    roles = np.where(valid, VALID, FIT).astype(np.int8)
    stop_report: dict[str, Any] = {}
    if early_stopping_fraction > 0:
        train_idx = np.flatnonzero(~valid)
        stop, stop_report = hold_out(spec, keys[train_idx], early_stopping_fraction, seed + 1,
                                     "stages.train.params.early_stopping_fraction")
        roles[train_idx[stop]] = EARLY_STOPPING
    select_report: dict[str, Any] = {}
    if selection_fraction > 0:
        fit_idx = np.flatnonzero(roles == FIT)
        if len(fit_idx) < 2:
            raise DataError("stages.train.params.search.selection_fraction: too few fitting "
                            "rows to hold a selection slice out; lower the other fractions")
        chosen_rows, select_report = hold_out(
            spec, keys[fit_idx], selection_fraction, seed + 2,
            "stages.train.params.search.selection_fraction")
        roles[fit_idx[chosen_rows]] = SELECTION
    report: dict[str, Any] = {"kind": spec.kind}
    if isinstance(spec, TimeSplit | GroupSplit):
        report["column"] = spec.column
    if "cut" in chosen and time_type is not None:
        report["cut"] = key_to_text(chosen["cut"], time_type)
        if "cut" in stop_report:
            report["early_stopping_cut"] = key_to_text(stop_report["cut"], time_type)
        if "cut" in select_report:
            report["selection_cut"] = key_to_text(select_report["cut"], time_type)
    report.update({k: v for k, v in chosen.items() if k != "cut"})
    requested = spec.fraction if cutoff is None else None
    report["fraction_requested"] = requested
    named = [("fit", FIT), ("early_stopping", EARLY_STOPPING), ("valid", VALID)]
    if selection_fraction > 0:
        named.append(("selection", SELECTION))
    report["fractions"] = {name: round(float((roles == r).sum()) / n, 5) for name, r in named}
    return Roles(roles, report)
