"""A fleet's pieces on small in-memory data: the segment column, the gate's comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchline import fleet, health, promotion
from batchline.errors import SpecError
from batchline.params import SEGMENT_COLUMN, FeaturesParams, PromoteSpec, TrainParams
from batchline.registry import Registry
from batchline.stages import fleet_gate
from batchline.stages import train as single
from batchline.stages.features import connect, feature_reader
from batchline.stages.matrix import FeatureMap
from batchline.task import StageTask


def _features(by: str, order_by: str | None = "id") -> pa.Table:
    data = pa.table({"id": [4, 3, 2, 1], "site": ["b2", "a1", "b1", None], "x": [1, 2, 3, 4]})
    params = FeaturesParams(sql="SELECT * FROM input", order_by=order_by,
                            segments={"by": by})  # type: ignore[arg-type]
    return feature_reader(connect(params), data, params).read_all()


def test_features_add_the_segment_first_and_sort_by_it() -> None:
    table = _features("site")
    assert table.column_names[0] == SEGMENT_COLUMN
    assert table.column(SEGMENT_COLUMN).to_pylist() == ["a1", "b1", "b2", None]
    assert table.column("id").to_pylist() == [3, 2, 4, 1]
    by_expression = _features("upper(substr(site, 1, 1))", order_by=None)  # ORDER BY ALL
    assert by_expression.column(SEGMENT_COLUMN).to_pylist() == ["A", "B", "B", None]


def test_a_bad_segment_expression_names_segments_by() -> None:
    with pytest.raises(SpecError, match="segments.by"):
        _features("x FROM input; SELECT 1")
    with pytest.raises(SpecError, match="stages.features.params.sql"):
        _features("no_such_column")


def test_remap_recodes_categories_for_the_champions_vocabulary() -> None:
    ours = FeatureMap(["n", "c"], {"c": ["a", "b", "c"]})
    theirs = FeatureMap(["n", "c"], {"c": ["b", "c", "d"]})
    x = np.array([[1.0, 0], [2.0, 1], [3.0, 2], [4.0, np.nan]], dtype=np.float32)
    out = fleet_gate.remap(x, ours, theirs)
    assert out is not None
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    np.testing.assert_array_equal(out[:, 1], [np.nan, 0, 1, np.nan])  # 'a' unseen there
    assert fleet_gate.remap(x, ours, FeatureMap(["n"], {})) is None


def _data(seed: int, flip: bool = False) -> single.TrainingData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1200, 2)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=1200) > 0).astype(np.float32)
    if flip:
        y = 1 - y
    return single.TrainingData(x, y, 800, 200, FeatureMap(["a", "b"], {}), None, {}, [])


def _params(**promote: object) -> TrainParams:
    return TrainParams(label="y", split={"kind": "random"}, num_boost_round=20,  # type: ignore[arg-type]
                       min_data_in_leaf=20, num_threads=1, promote=PromoteSpec(**promote))  # type: ignore[arg-type]


def _challenge(registry: Registry, data: single.TrainingData, params: TrainParams,
               run_id: str) -> dict:
    model = single.train(data, params)
    card = single.model_card(model, params, run_id)
    version = registry.register("H1", model.text.encode(), {"card": card})
    verdict = fleet_gate.decide(registry, "H1", version, single.commit_metrics(model),
                                fleet_gate.Holdout.of(data), params)
    return {**verdict, **promotion.apply(registry, "H1", verdict, run_id, None)}


def test_the_gate_compares_on_the_same_rows_and_records_why(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), "fleet")
    first = _challenge(registry, _data(1), _params(), "r1")
    assert first["promoted"] and first["reason"] == "first model of this segment"
    # The data flipped: the old champion is worse than chance on the new rows.
    flipped = _challenge(registry, _data(2, flip=True), _params(min_gain=0.01), "r2")
    assert flipped["promoted"] and flipped["champion_version"] == first["version"]
    assert flipped["champion"] < 0.5 < flipped["challenger"]
    assert registry.alias("H1").version == flipped["version"]  # type: ignore[union-attr]
    # A challenger that is not better by min_gain is refused, and becomes the challenger.
    refused = _challenge(registry, _data(3, flip=True), _params(min_gain=0.5), "r3")
    assert not refused["promoted"] and "below promote.min_gain 0.5" in refused["reason"]
    assert refused["serving"] == flipped["version"]
    assert registry.alias("H1", "challenger").version == refused["version"]  # type: ignore[union-attr]
    strict = _challenge(registry, _data(4, flip=True), _params(min_rows=10_000), "r4")
    assert not strict["promoted"] and "fewer than promote.min_rows 10000" in strict["reason"]
    assert [d["run_id"] for d in registry.decisions("H1")] == ["r1", "r2", "r3", "r4"]


def _task(root: Path) -> StageTask:
    return StageTask(run_id="m1", stage="monitor", inputs={}, outputs={}, params={},
                     storage_root=str(root), task_uri="", cache_key="k",
                     placement={"pipeline": "fleet"})


def test_a_degraded_champion_is_what_the_gate_says_first(tmp_path: Path) -> None:
    """The monitor's verdict on matured outcomes lands beside the champion in the
    registry; the next gate of its segment names it before anything else."""
    registry = Registry(str(tmp_path), "fleet")
    first = _challenge(registry, _data(1), _params(), "r1")
    by_model = [{"model": f"H1/{first['version']}", "model_segment": "H1",
                 "model_version": first["version"], "judged": True, "degraded": True,
                 "auc": 0.58, "training": 0.74, "labelled": 900},
                {"model": "H9/0123456789ab", "model_segment": "H9",  # not registered here
                 "model_version": "0123456789ab", "judged": True, "degraded": True,
                 "auc": 0.5, "training": 0.7, "labelled": 500}]
    metrics = {"monitor": {"metric": "auc", "tolerance": 0.05, "by_model": by_model}}
    health.settle(_task(tmp_path), metrics, "the stage failed")  # a failed stage marks nothing
    assert registry.health("H1", first["version"]) is None
    health.settle(_task(tmp_path), metrics, None)
    marked = registry.health("H1", first["version"])
    assert marked is not None and marked["degraded"] and marked["run_id"] == "m1"
    assert not (tmp_path / "registry" / "fleet" / "H9").exists()
    refused = _challenge(registry, _data(3), _params(min_gain=0.5), "r2")
    assert not refused["promoted"]
    assert refused["reason"].startswith(f"champion {first['version']} is degraded: auc 0.5800 "
                                        "on 900 matured outcomes against 0.7400 at training "
                                        "(monitor run m1); ")
    assert "below promote.min_gain 0.5" in refused["reason"]


def test_the_first_global_model_is_promoted_even_if_it_misses_a_check(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), "fleet")
    data, params = _data(1), _params(min_rows=10_000)
    model = single.train(data, params)
    version = registry.register(fleet.GLOBAL, model.text.encode(),
                                {"card": single.model_card(model, params, "r1")})
    decision = fleet_gate.decide(registry, fleet.GLOBAL, version, single.commit_metrics(model),
                                 fleet_gate.Holdout.of(data), params)
    assert decision["promote"] and "the fallback must exist" in decision["reason"]
    assert registry.alias(fleet.GLOBAL) is None  # the gate judges; the launcher moves


def _verdict(registry: Registry, n: int, run_id: str) -> dict:
    data, params = _data(n), _params()
    model = single.train(data, params)
    version = registry.register("H1", model.text.encode(),
                                {"card": single.model_card(model, params, run_id)})
    return fleet_gate.decide(registry, "H1", version, single.commit_metrics(model),
                             fleet_gate.Holdout.of(data), params)


def test_a_failed_fleet_promotes_nothing_and_says_why(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), "fleet")
    verdict = _verdict(registry, 1, "r1")
    assert verdict["promote"]
    decision = promotion.apply(registry, "H1", verdict, "r1", "3 of 5 segment models failed")
    assert not decision["promoted"]
    assert decision["reason"] == ("the fleet failed, so nothing was promoted; the gate had "
                                  "said: first model of this segment")
    assert registry.alias("H1") is None and registry.alias("H1", "challenger") is None
    assert registry.decisions("H1")[0]["promoted"] is False


def test_settling_again_after_a_resume_keeps_the_win(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), "fleet")
    verdict = _verdict(registry, 1, "r1")
    assert promotion.apply(registry, "H1", verdict, "r1", None)["promoted"]
    again = promotion.apply(registry, "H1", verdict, "r1", None)  # a resumed launcher
    assert again["promoted"] and registry.alias("H1").version == verdict["version"]  # type: ignore[union-attr]
    assert registry.alias("H1").history == []  # type: ignore[union-attr]


def test_a_champion_moved_after_the_verdict_loses_the_move(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), "fleet")
    ours, theirs = _verdict(registry, 1, "r1"), _verdict(registry, 2, "r2")
    assert promotion.apply(registry, "H1", theirs, "r2", None)["promoted"]
    lost = promotion.apply(registry, "H1", ours, "r1", None)
    assert not lost["promoted"]
    assert lost["reason"].startswith(f"run r2 moved champion to version {theirs['version']} "
                                     "first")
    assert registry.alias("H1").version == theirs["version"]  # type: ignore[union-attr]


def test_score_routes_unseen_and_missing_segments_to_the_global_model(tmp_path: Path) -> None:
    from batchline import storage
    from batchline.stages import fleet_score
    from batchline.stages import score as single_score

    params = _params()
    models = {key: single.train(_data(seed), params) for key, seed in
              ((fleet.GLOBAL, 1), ("H1", 2))}
    uri = str(tmp_path / "model")
    with storage.DatasetWriter(uri, storage.Stamp("r1", "train", "k")) as out:
        board = []
        for key, model in models.items():
            card = single.model_card(model, params, "r1")
            out.write_file(fleet.model_file(key, "txt"), model.text.encode())
            out.write_file(fleet.model_file(key, "json"), fleet_json(card))
            board.append({"segment": key, "value": None if key == fleet.GLOBAL else key,
                          "status": fleet.OK, "serving_version": card["model_version"]})
        out.write_file(fleet.LEADERBOARD, fleet_json(board))
        out.commit()
    fleet_models = fleet_score.FleetModels(uri)
    batch = pa.RecordBatch.from_pydict({
        "id": [1, 2, 3, 4], SEGMENT_COLUMN: ["H1", "H9", None, "H1"],
        "a": [0.1, 0.2, 0.3, 0.4], "b": [1.0, 1.0, 1.0, 1.0]})
    glob = fleet_models.fallback
    schema = fleet_score.prediction_schema([pa.field("id", pa.int64())], glob.card)
    tally = single_score.Tally()
    out_rows = pa.Table.from_batches(list(fleet_score.score_batches(
        [batch], fleet_models, ["id"], schema, "r2", 1, (0, 1), tally))).to_pylist()
    by_id = {r["id"]: r for r in out_rows}
    assert tally.rows == 4 and sorted(by_id) == [1, 2, 3, 4]
    assert [by_id[i]["model_segment"] for i in (1, 2, 3, 4)] == ["H1", fleet.GLOBAL,
                                                                  fleet.GLOBAL, "H1"]
    assert by_id[2]["segment"] == "H9" and by_id[3]["segment"] is None
    assert by_id[1]["model_version"] == models["H1"].sha256[:12]
    assert fleet_models.loaded == 2


def fleet_json(data: object) -> bytes:
    import json

    return json.dumps(data, sort_keys=True).encode()
