"""The pure parts of a fleet: segment keys, the plan, packing, merging and the verdict."""

from __future__ import annotations

import pytest

from batchline import fleet, storage


def test_segment_keys_are_safe_path_segments_and_distinct() -> None:
    assert fleet.segment_key("H017") == "H017"
    odd = ["Saint Mary's / North", "Saint Mary's - North", "", "_global", "../x", "null-segment"]
    keys = [fleet.segment_key(v) for v in odd] + [fleet.segment_key(None)]
    assert len(set(keys)) == len(keys)
    assert fleet.GLOBAL not in keys
    for key in keys:
        storage.join("s3://b/registry", key)  # raises on an unsafe segment


def test_plan_gives_own_models_to_big_segments_only() -> None:
    plan = fleet.plan({"A": 500, "B": 99, None: 700, "C": 100}, min_rows=100)
    assert plan.own == {"A": 500, "C": 100}
    assert plan.fallback == {"B": 99, "null-segment": 700}  # no value: global model
    assert plan.rows == 1399
    assert plan.work() == {fleet.GLOBAL: 1399, "A": 500, "C": 100}


def test_pack_is_largest_first_to_the_least_loaded_and_deterministic() -> None:
    sizes = {"g": 100, "a": 60, "b": 50, "c": 40, "d": 10, "e": 10}
    bins = fleet.pack(sizes, 2)
    assert bins == [["g", "c"], ["a", "b", "d", "e"]]  # loads 140 and 130
    assert fleet.pack(dict(reversed(list(sizes.items()))), 2) == bins
    assert sorted(k for b in fleet.pack(sizes, 4) for k in b) == sorted(sizes)
    assert fleet.pack(sizes, 10)[9] == []  # more workers than models: some idle
    with pytest.raises(ValueError):
        fleet.pack(sizes, 0)


def test_merge_and_verdict() -> None:
    parts = [{"trained_global": True, "auc_valid": 0.7, "segments_trained": 0,
              "segments_failed": 0, "failed_parts": [], "segments_fallback": 3,
              "max_failed_fraction": 0.25, "warnings": ["w"]},
             {"segments_trained": 3, "segments_failed": 1, "failed_parts": ["H3"],
              "segments_fallback": 0, "max_failed_fraction": 0.25, "warnings": ["w"]}]
    merged = fleet.merge_metrics(parts)
    assert merged["auc_valid"] == 0.7 and merged["segments_trained"] == 3
    assert merged["failed_parts"] == ["H3"] and merged["segments_fallback"] == 3
    assert merged["warnings"][0] == "w" and "H3" in merged["warnings"][1]
    assert fleet.verdict(merged) is None  # 1 of 4 = 0.25, not more
    strict = fleet.verdict({**merged, "max_failed_fraction": 0.2})
    assert strict is not None and "1 of 4 segment models failed (H3)" in strict
    assert fleet.verdict({"auc_valid": 0.7}) is None  # a single model is never judged
