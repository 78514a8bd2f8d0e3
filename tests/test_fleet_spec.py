"""The spec's `segments:` section and the fleet demo data (fast: no stage runs)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
import yaml
from conftest import ROOT, SPEC

from batchline.demo_data import generate
from batchline.errors import SpecError
from batchline.params import ScoreParams, TrainParams
from batchline.spec import load_spec, parse_spec

FLEET = ROOT / "jobs" / "readmission_fleet.yaml"


def _data(path: Path = FLEET) -> dict:
    return yaml.safe_load(path.read_text())


def test_segments_reach_the_stages_that_take_them() -> None:
    spec = load_spec(FLEET)
    assert spec.segments is not None and spec.segments.by == "hospital_id"
    train = spec.params("train")
    assert isinstance(train, TrainParams) and train.segments == spec.segments
    score = spec.params("score")
    assert isinstance(score, ScoreParams) and score.segments == spec.segments
    assert spec.params("train").model_dump(mode="json")["segments"]["min_rows"] == 1000
    assert "segments" not in spec.params("ingest").model_dump()  # ingest does not take them


def test_a_spec_without_segments_dumps_exactly_as_before() -> None:
    spec = load_spec(SPEC)
    assert spec.segments is None
    assert "segments" not in spec.model_dump(mode="json")
    for stage in spec.stages:
        assert "segments" not in spec.params(stage).model_dump(mode="json")


@pytest.mark.parametrize(("section", "message"), [
    ({"by": "hospital_id", "min_rows": 5}, r"segments\.min_rows"),
    ({"by": "hospital_id", "fallback": "none"}, r"segments\.fallback"),
    ({"by": "hospital_id", "max_failed_fraction": 2}, r"segments\.max_failed_fraction"),
    ({"min_rows": 500}, r"segments\.by"),
    ({"by": "hospital_id", "bye": 1}, r"segments\.bye"),
])
def test_a_bad_segments_section_names_its_field(section: dict, message: str) -> None:
    data = _data()
    data["segments"] = section
    with pytest.raises(SpecError, match=message):
        parse_spec(data, "fleet.yaml")


def test_segments_are_set_once_at_the_top_level() -> None:
    data = _data()
    data["stages"]["train"]["params"]["segments"] = {"by": "hospital_id"}
    with pytest.raises(SpecError, match=r"stages\.train\.params\.segments: segments is set "
                                        "once, at the top level"):
        parse_spec(data, "fleet.yaml")


def test_promote_needs_segments_and_reaches_train_only() -> None:
    spec = load_spec(FLEET)
    train = spec.params("train")
    assert isinstance(train, TrainParams) and train.promote is not None
    assert train.promote.metric == "auc" and train.promote.min_gain == 0.002
    assert "promote" not in spec.params("score").model_dump()
    data = _data()
    del data["segments"], data["stages"]["train"]["shards"]
    with pytest.raises(SpecError, match="promote: gates a fleet's models; add a segments:"):
        parse_spec(data, "fleet.yaml")
    data = _data()
    data["promote"]["metric"] = "f1"
    with pytest.raises(SpecError, match=r"promote\.metric"):
        parse_spec(data, "fleet.yaml")


def test_train_takes_shards_only_in_a_fleet() -> None:
    data = _data()
    del data["segments"]
    with pytest.raises(SpecError, match=r"stages\.train\.shards: stage 'train' cannot be "
                                        "sharded"):
        parse_spec(data, "fleet.yaml")
    assert load_spec(FLEET).stages["train"].shards == 2


def test_fleet_demo_data_has_hospitals_of_varied_size_and_is_reproducible(
        tmp_path: Path) -> None:
    generate(20_000, tmp_path / "a", seed=5, hospitals=10, fleet=True)
    generate(20_000, tmp_path / "b", seed=5, hospitals=10, fleet=True)
    a = (tmp_path / "a" / "encounters.csv").read_bytes()
    assert a == (tmp_path / "b" / "encounters.csv").read_bytes()
    counts = pc.value_counts(pacsv.read_csv(tmp_path / "a" / "encounters.csv")
                             .column("hospital_id")).to_pylist()
    sizes = sorted(c["counts"] for c in counts)
    assert len(sizes) == 10
    assert sizes[-1] > 4 * sizes[0]  # geometric sizes, ~10x apart
    generate(20_000, tmp_path / "c", seed=6, hospitals=10, fleet=True)
    assert (tmp_path / "c" / "encounters.csv").read_bytes() != a


def test_demo_data_refuses_a_fleet_it_cannot_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--hospitals must be between 1 and 999"):
        generate(1_000, tmp_path, hospitals=1000, fleet=True)
