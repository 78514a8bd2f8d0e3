"""Drift: train's reference profile, score's streamed histograms, PSI with its noise floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline import psi, storage
from batchline.client import Client
from batchline.demo_data import generate
from batchline.stages import drift
from batchline.stages.matrix import FeatureMap

FMAP = FeatureMap(["lab", "group"], {"group": ["a", "b", "c"]})


def _matrix(rng: np.random.Generator, n: int, shift: float = 0.0,
            groups: tuple[float, ...] = (0.5, 0.3, 0.2)) -> np.ndarray:
    lab = rng.normal(12.0 + shift, 1.5, n)
    lab[rng.random(n) < 0.05] = np.nan
    group = rng.choice(len(groups), n, p=groups).astype(np.float64)
    return np.column_stack([lab, group]).astype(np.float32)


def _result(reference: np.ndarray, population: np.ndarray) -> dict:
    ref_pred = reference[:, 0] / 20
    profile = drift.reference(reference, ref_pred, FMAP)
    tally = drift.Tally(profile, FMAP)
    tally.add(population, population[:, 0] / 20)
    return tally.result(0.1, 0.25)


def test_the_same_distribution_is_stable_and_a_shift_is_flagged_on_its_feature() -> None:
    rng = np.random.default_rng(1)
    reference = _matrix(rng, 20_000)
    same = _result(reference, _matrix(rng, 5_000))
    assert same["drifted"] == []
    assert all(r["psi"] < 0.05 for r in same["psi"].values())
    shifted = _result(reference, _matrix(rng, 5_000, shift=1.5))
    assert shifted["drifted"] == ["lab", "prediction"]  # the score follows the lab here
    assert shifted["psi"]["lab"]["band"] == psi.MAJOR
    assert shifted["psi"]["group"]["band"] == psi.STABLE
    regrouped = _result(reference, _matrix(rng, 5_000, groups=(0.2, 0.3, 0.5)))
    assert regrouped["drifted"] == ["group"]
    # The bins and counts are kept beside the number, so the report can draw them.
    lab = shifted["psi"]["lab"]
    assert len(lab["expected"]) == len(lab["edges"]) + 2  # + above the last edge, + missing
    assert sum(lab["actual"]) == 5_000 and sum(lab["expected"]) == 20_000


def test_a_small_population_is_judged_above_its_noise() -> None:
    """600 rows over 60 categories: PSI about 0.1 by chance alone, which is not drift."""
    rng = np.random.default_rng(2)
    fmap = FeatureMap(["hospital"], {"hospital": [f"H{i:03d}" for i in range(60)]})
    reference = rng.integers(0, 60, (30_000, 1)).astype(np.float32)
    small = rng.integers(0, 60, (600, 1)).astype(np.float32)
    profile = drift.reference(reference, reference[:, 0] / 60, fmap)
    tally = drift.Tally(profile, fmap)
    tally.add(small, small[:, 0] / 60)
    result = tally.result(0.1, 0.25)["psi"]["hospital"]
    assert result["psi"] > 0.05  # what a plain PSI would call a moderate shift, nearly
    assert abs(result["noise"] - 59 * (1 / 30_000 + 1 / 600)) < 1e-4
    assert result["band"] == psi.STABLE


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=6), st.integers(1, 3))
def test_batches_and_shards_add_up_to_the_whole(sizes: list[int], shards: int) -> None:
    """Streaming is exact: any batching, and shards merged by the launcher, give the
    counts and PSI of the population scored at once."""
    rng = np.random.default_rng(sum(sizes))
    reference = _matrix(rng, 3_000)
    population = _matrix(rng, sum(sizes), shift=0.4)
    profile = drift.reference(reference, reference[:, 0] / 20, FMAP)
    whole = drift.Tally(profile, FMAP)
    whole.add(population, population[:, 0] / 20)
    parts = [drift.Tally(profile, FMAP) for _ in range(shards)]
    start = 0
    for i, size in enumerate(sizes):
        batch = population[start:start + size]
        parts[i % shards].add(batch, batch[:, 0] / 20)
        start += size
    merged = psi.merge_score_metrics([{"rows_scored": 1, "drift": p.result(0.1, 0.25)}
                                      for p in parts])
    assert merged["drift"] == whole.result(0.1, 0.25)
    assert merged["rows_scored"] == shards


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Client, Path, pa.Table]:
    out = tmp_path_factory.mktemp("drift")
    generate(20_000, out / "data", seed=7)
    client = Client(str(out / "store"))
    manifest = client.run(str(ROOT / "jobs" / "readmission.yaml"), run_id="base",
                          sets={"stages.ingest.params.source": str(out / "data" /
                                                                    "encounters.csv")})
    features = storage.open_dataset(manifest.stage("features").outputs["features"]).to_table()
    labelled = features.filter(pc.is_valid(features.column("readmitted_30d")))
    # Rows like the training rows: a sample of them.
    sample = labelled.take(np.random.default_rng(0).choice(labelled.num_rows, 4_000,
                                                           replace=False))
    return client, out, sample


def _score(client: Client, out: Path, name: str, population: pa.Table) -> dict:
    path = out / f"{name}.parquet"
    pq.write_table(population, path)
    manifest = client.run(str(ROOT / "jobs" / "readmission.yaml"), run_id=name, sets={
        "stages.ingest.params.source": str(out / "data" / "encounters.csv"),
        "stages.score.params.population": {"source": str(path)}})
    assert manifest.stage("train").state.value == "reused"  # only score ran again
    metrics = storage.committed(manifest.stage("score").outputs["predictions"]).metrics
    assert manifest.stage("score").metrics["drift_alerts"] == len(metrics["drift"]["drifted"])
    return metrics


@pytest.mark.slow
def test_a_shifted_lab_value_or_a_new_diagnosis_group_is_flagged_on_exactly_it(
        demo_run: tuple[Client, Path, pa.Table]) -> None:
    client, out, sample = demo_run
    same = _score(client, out, "same", sample)
    assert [n for n in same["drift"]["drifted"] if n != psi.PREDICTION] == []

    hemoglobin = sample.column("hemoglobin")
    shifted = sample.set_column(sample.schema.get_field_index("hemoglobin"), "hemoglobin",
                                pc.add(hemoglobin, pa.scalar(2.5, hemoglobin.type)))
    lab = _score(client, out, "shifted-lab", shifted)
    assert [n for n in lab["drift"]["drifted"] if n != psi.PREDICTION] == ["hemoglobin"]
    assert lab["drift"]["psi"]["hemoglobin"]["band"] == psi.MAJOR
    assert any(w.startswith("drift: hemoglobin PSI") for w in lab["warnings"])
    # Runs compared at a glance: the model's AUC, rows scored, drift alerts.
    listed = run_cli("runs", "--storage", str(out / "store")).stdout.splitlines()
    line = next(x for x in listed if x.startswith("shifted-lab\t"))
    assert line.endswith(f"rows_scored {sample.num_rows:,}, drift_alerts "
                         f"{len(lab['drift']['drifted'])}"), line
    assert "\tauc_valid 0." in line
    shown = run_cli("status", "same", "--storage", str(out / "store")).stdout
    assert "figures: auc_valid 0." in shown and "drift_alerts 0" in shown

    group = sample.column("diagnosis_group")
    renamed = pc.if_else(pc.less(pa.array(np.arange(sample.num_rows)), sample.num_rows // 3),
                         pa.scalar("new_group", group.type), group)
    new_group = _score(client, out, "new-group",
                       sample.set_column(sample.schema.get_field_index("diagnosis_group"),
                                         "diagnosis_group", renamed))
    assert [n for n in new_group["drift"]["drifted"]
            if n != psi.PREDICTION] == ["diagnosis_group"]
    codes = new_group["drift"]["psi"]["diagnosis_group"]
    assert codes["actual"][-1] >= sample.num_rows // 3  # unseen values land in the last bin
