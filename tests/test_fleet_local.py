"""A fleet end to end on the local backend: 20 hospitals, one with a single-class label.

Small on purpose (CI time): 20 hospitals of 150-1,500 rows, tiny models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli

from batchline import fleet, storage
from batchline.client import Client
from batchline.demo_data import generate
from batchline.errors import BatchlineError, StageFailed
from batchline.manifest import RunManifest
from batchline.params import SEGMENT_COLUMN

pytestmark = pytest.mark.slow
FLEET = ROOT / "jobs" / "readmission_fleet.yaml"
BROKEN = "H003"  # its labels are all 0: its model cannot be built


@pytest.fixture(scope="module")
def fleet_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(12_000, out, seed=3, hospitals=20, fleet=True)
    path = out / "encounters.csv"
    table = pacsv.read_csv(path)
    label = table.column("readmitted_30d")
    broken = pc.equal(table.column("hospital_id"), BROKEN)
    zeros = pc.if_else(pc.and_(broken, pc.is_valid(label)), pa.scalar(0, pa.int64()), label)
    pacsv.write_csv(table.set_column(table.schema.get_field_index("readmitted_30d"),
                                     "readmitted_30d", zeros), path)
    return path


def _sets(source: Path, **extra: object) -> dict[str, object]:
    return {"stages.ingest.params.source": str(source), "segments.min_rows": 300,
            "stages.train.params.num_boost_round": 60,
            "segments.max_failed_fraction": 0.1, "promote.max_calibration_error": 0.5,
            "promote.min_rows": 0, **extra}


def _board(manifest: RunManifest) -> list[dict]:
    return fleet.read_leaderboard(manifest.stage("train").outputs["model"])


def test_fleet_trains_per_segment_routes_scores_and_resumes_only_the_failed(
        fleet_csv: Path, tmp_path: Path) -> None:
    client = Client(str(tmp_path / "store"))
    # Too strict a limit: the one failed hospital fails the fleet, naming it.
    with pytest.raises(StageFailed) as failed:
        client.run(str(FLEET), sets=_sets(fleet_csv, **{"segments.max_failed_fraction": 0.0}),
                   run_id="strict")
    assert failed.value.stage == "train" and BROKEN in str(failed.value)
    assert "max_failed_fraction" in str(failed.value)

    manifest = client.run(str(FLEET), sets=_sets(fleet_csv), run_id="fleet")
    board = {row["segment"]: row for row in _board(manifest)}
    counts = pc.value_counts(pacsv.read_csv(fleet_csv).column("hospital_id")).to_pylist()
    assert set(board) == {fleet.GLOBAL} | {c["values"] for c in counts}  # every hospital listed
    assert board[BROKEN]["status"] == fleet.FAILED
    assert "holds only [0.0]" in board[BROKEN]["cause"]
    own = [k for k, r in board.items() if r["status"] == fleet.OK and k != fleet.GLOBAL]
    small = [k for k, r in board.items() if r["status"] == fleet.FALLBACK]
    assert own and small and all(board[k]["rows"] < 300 for k in small)
    assert all(0.3 < board[k]["auc_valid"] <= 1.0 for k in own)
    train = manifest.stage("train")
    assert train.metrics["auc_valid"] == board[fleet.GLOBAL]["auc_valid"]
    assert any(BROKEN in w and "resume" in w for w in train.warnings)
    # The two workers split the models: the global one alone, the segments on the other.
    model_uri = train.outputs["model"]
    shards = [storage.committed(f"{model_uri}/shard-0000{i}") for i in range(2)]
    assert [s.metrics["segments_trained"] for s in shards] == [0, len(own)]

    # Each segment reads only its own row groups: the features are sorted by segment.
    features = storage.open_dataset(manifest.stage("features").outputs["features"])
    fragments = list(features.get_fragments())
    groups = sum(f.num_row_groups for f in fragments)
    hit = sum(len(f.split_by_row_group(ds.field(SEGMENT_COLUMN) == "H007")) for f in fragments)
    assert groups >= 1 and hit <= 2

    # Score routes each row to its segment's model, the others to the global one.
    predictions = storage.open_dataset(manifest.stage("score").outputs["predictions"]).to_table()
    rows = predictions.to_pylist()
    assert rows
    # The strict run's fleet failed, so it promoted nothing, though each model passed
    # the gate; this run's first models are the champions.
    registry = client.registry("readmission-fleet")
    for key in [fleet.GLOBAL, *own]:
        assert board[key]["serving_version"] == board[key]["model_version"]
        decisions = {d["run_id"]: d for d in registry.decisions(key)}
        assert not decisions["strict"]["promoted"]
        assert decisions["strict"]["reason"].startswith("the fleet failed, so nothing was "
                                                        "promoted; the gate had said: ")
        assert decisions["fleet"]["promoted"]
        assert decisions["fleet"]["reason"].startswith("first model of this segment")
        assert registry.alias(key).run_id == "fleet"  # type: ignore[union-attr]
    assert registry.alias(BROKEN) is None  # never trained: no champion, the global one scores
    for row in rows:
        expected = row["segment"] if row["segment"] in own else fleet.GLOBAL
        assert row["model_segment"] == expected
        assert row["model_version"] == board[expected]["model_version"]
    assert {r["model_segment"] for r in rows} >= {fleet.GLOBAL, own[0]}

    # Resume trains only the failed hospital again; equal bytes leave score as it was.
    before = storage.committed(model_uri).fingerprint
    resumed = client.resume("fleet")
    assert resumed.stage("train").state.value == "succeeded"
    # The worker of the global model had nothing to redo: it is not started again.
    attempts = sorted(p.name for p in (tmp_path / "store" / "runs" / "fleet" / "train" / "logs")
                      .glob("attempt-2*"))
    assert attempts == ["attempt-2-shard-1.log"]
    logs = (tmp_path / "store" / "runs" / "fleet" / "train" / "logs" / attempts[0]).read_text()
    assert logs.count("carried over from an earlier attempt") == len(own)
    assert f"segment {BROKEN} failed" in logs and "trained in" not in logs
    assert storage.committed(model_uri).fingerprint == before
    assert resumed.stage("score").state.value == "reused"
    np.testing.assert_array_equal(
        storage.open_dataset(resumed.stage("score").outputs["predictions"]).to_table()
        .column("score").to_numpy(), predictions.column("score").to_numpy())
    assert json.loads(json.dumps(train.metrics))  # the manifest keeps plain JSON


def _shifted(source: Path, out: Path, hospital: str) -> Path:
    """The same encounters with one hospital's labels flipped (its data drifted)."""
    table = pacsv.read_csv(source)
    label = table.column("readmitted_30d")
    flip = pc.subtract(pa.scalar(1, pa.int64()), label)
    moved = pc.if_else(pc.equal(table.column("hospital_id"), hospital), flip, label)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "encounters.csv"
    pacsv.write_csv(table.set_column(table.schema.get_field_index("readmitted_30d"),
                                     "readmitted_30d", moved), path)
    return path


def test_a_shifted_hospital_gets_a_new_champion_the_others_stay_and_scoring_needs_no_train(
        fleet_csv: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    client = Client(str(root))
    first = client.run(str(FLEET), sets=_sets(fleet_csv), run_id="first")
    registry = client.registry("readmission-fleet")
    before = {s: registry.alias(s) for s in registry.segments()}
    assert "H007" in before and before["H007"] is not None

    second = client.run(str(FLEET), sets=_sets(_shifted(fleet_csv, tmp_path / "shift", "H007")),
                        run_id="second")
    board = {row["segment"]: row for row in _board(second)}
    assert board["H007"]["decision"]["promote"]  # the gate's verdict, in the commit
    # ... and how it ended, as the launcher moved the alias and recorded it
    decision = registry.decision("H007", "second")
    assert decision is not None and decision["promoted"], decision
    leaderboard = {row["segment"]: row for row in client.leaderboard("second")}
    assert leaderboard["H007"]["decision"] == decision
    assert decision["champion_version"] == before["H007"].version  # type: ignore[union-attr]
    assert decision["challenger"] - decision["champion"] >= 0.002  # scored on the same rows
    assert registry.alias("H007").run_id == "second"  # type: ignore[union-attr]
    untouched = [s for s in before if s not in ("H007", fleet.GLOBAL)]
    assert untouched
    for segment in untouched:  # the same rows train the same model: nothing moves
        assert registry.alias(segment) == before[segment]
        assert board[segment]["decision"]["reason"] == "the same model is the champion already"
    assert {d["run_id"] for d in registry.decisions("H007")} == {"first", "second"}

    # The registry through the CLI, as a person reads it.
    listed = json.loads(run_cli("models", "list", "--storage", str(root), "--json").stdout)
    assert {r["segment"]: r["champion"] for r in listed}["H007"] == decision["version"]
    shown = run_cli("models", "show", "readmission-fleet", "H007", "--storage", str(root))
    assert shown.returncode == 0 and "decision of run second: promoted" in shown.stdout
    back = run_cli("models", "rollback", "readmission-fleet", "H007", "--storage", str(root))
    assert back.returncode == 0, back.stderr
    assert registry.alias("H007").version == before["H007"].version  # type: ignore[union-attr]
    board_cli = run_cli("models", "leaderboard", "second", "--storage", str(root))
    assert f"{BROKEN}\tfailed" in board_cli.stdout

    # A scoring-only run needs no train: score reads the champions (H007 rolled back).
    scoring = client.run(str(FLEET), sets=_sets(fleet_csv), stages=["ingest", "features",
                                                                     "score"], run_id="scoring")
    assert scoring.stage("train").state.value == "skipped"
    assert scoring.stage("score").state.value == "succeeded"
    rows = storage.open_dataset(scoring.stage("score").outputs["predictions"]).to_table()
    versions = {r["segment"]: r["model_version"] for r in rows.to_pylist()
                if r["model_segment"] == "H007"}
    assert set(versions.values()) == {before["H007"].version}  # type: ignore[union-attr]
    assert first.stage("score").state.value == "succeeded"


def test_a_resumed_run_settles_the_promotions_its_dead_launcher_left(tmp_path: Path) -> None:
    """train committed, then its launcher died before moving the aliases (played here by
    removing them) and score failed: `resume` reuses train's commit and settles it."""
    generate(12_000, tmp_path / "clean", seed=3, hospitals=20, fleet=True)  # none fails
    root = tmp_path / "store"
    client = Client(str(root))
    with pytest.raises(BatchlineError):  # score: a population source that is not there
        client.run(str(FLEET), run_id="cut", sets=_sets(
            tmp_path / "clean" / "encounters.csv",
            **{"stages.score.params.population": {"source": str(tmp_path / "x")}}))
    registry = client.registry("readmission-fleet")
    settled = {s: registry.alias(s) for s in registry.segments()}
    assert settled and all(a is not None and a.run_id == "cut" for a in settled.values())
    for segment in settled:
        for folder in ("aliases", "decisions"):
            shutil.rmtree(root / "registry" / "readmission-fleet" / segment / folder)
    assert all(registry.alias(s) is None for s in settled)

    with pytest.raises(BatchlineError):
        client.resume("cut")
    train = client.status("cut").stage("train")
    assert train.state.value == "reused" and {a.number for a in train.attempts} == {1}
    assert {s: registry.alias(s).version for s in settled} == \
        {s: a.version for s, a in settled.items()}  # type: ignore[union-attr]
    assert all(registry.decision(s, "cut")["promoted"] for s in settled)  # type: ignore[index]


def test_each_segment_model_is_checked_for_drift_on_its_own_rows(fleet_csv: Path,
                                                                  tmp_path: Path) -> None:
    """Scored on rows like its training rows, no model shows drift; with one hospital's lab
    value shifted, that hospital's model flags it and no other does. Segments with fewer
    than drift.min_rows scored rows are recorded, not judged."""
    client = Client(str(tmp_path / "store"))
    first = client.run(str(FLEET), sets=_sets(fleet_csv), run_id="first")
    scored = storage.committed(first.stage("score").outputs["predictions"]).metrics
    assert all(r["rows"] < 100 and not r["drifted"] for r in scored["drift_segments"].values()
               if r["rows"] < 100)  # the unlabelled rows: a few dozen per hospital

    features = storage.open_dataset(first.stage("features").outputs["features"]).to_table()
    labelled = features.filter(pc.is_valid(features.column("readmitted_30d")))
    lab = labelled.column("hemoglobin")
    in_h007 = pc.equal(labelled.column(SEGMENT_COLUMN), "H007")
    populations = {"same": labelled, "shifted": labelled.set_column(
        labelled.schema.get_field_index("hemoglobin"), "hemoglobin",
        pc.if_else(in_h007, pc.add(lab, pa.scalar(3.0, lab.type)), lab))}
    found = {}
    for name, table in populations.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        run = client.run(str(FLEET), run_id=name, sets=_sets(fleet_csv, **{
            "stages.score.params.population": {"source": str(tmp_path / f"{name}.parquet")}}))
        assert run.stage("train").state.value == "reused"
        found[name] = storage.committed(run.stage("score").outputs["predictions"]).metrics
    def features(result: dict) -> dict[str, list[str]]:
        # Predictions are left out: on its own training rows a model predicts more
        # sharply than on the validation rows its profile holds, which is no drift.
        return {k: [n for n in r["drifted"] if n != "prediction"]
                for k, r in result["drift_segments"].items()}
    same, shifted = features(found["same"]), features(found["shifted"])
    # The global model scores only the small hospitals' rows: their mix differs from
    # the all-hospital rows it was trained on, a real difference the check reports.
    assert {k: v for k, v in same.items() if v} == {fleet.GLOBAL: ["hospital_id"]}
    assert {k: v for k, v in shifted.items() if v != same[k]} == {"H007": ["hemoglobin"]}
    assert found["shifted"]["drift_segments"]["H007"]["rows"] == pc.sum(in_h007).as_py()
    assert any(w.startswith("drift: segment H007") and "hemoglobin" in w
               for w in found["shifted"]["warnings"])
    # Each trained model's profile is registered beside it, for later runs to serve.
    champion = client.registry("readmission-fleet").alias("H007")
    assert champion is not None
    assert client.registry("readmission-fleet").file("H007", champion.version, "profile.json")


def test_the_monitor_judges_each_hospital_model_and_marks_it_in_the_registry(
        tmp_path: Path) -> None:
    """A fleet scores 18 months; its outcomes mature, and the label model changed
    half-way. The monitor judges each hospital (the predictions name their segment) and
    each model against its own training figure, and the registry learns which degraded."""
    for name, days in (("early", 548), ("late", 0)):
        generate(12_000, tmp_path / name, seed=5, hospitals=20, fleet=True,
                 population_days=days, label_change="2024-01-01")
    monitor = {"stages.monitor.params.label": "readmitted_30d",
               "stages.monitor.params.id_columns": ["encounter_id"],
               "stages.monitor.params.time_column": "discharge_date",
               "stages.monitor.params.min_labelled": 100}
    client = Client(str(tmp_path / "store"))
    first = client.run(str(FLEET), run_id="first",
                       sets=_sets(tmp_path / "early" / "encounters.csv", **monitor))
    assert storage.committed(first.stage("monitor").outputs["accuracy"]).metrics[
        "monitor"]["scorings"] == []
    # the next run: the whole pipeline on the matured data, as a nightly run would
    second = client.run(str(FLEET), run_id="second",
                        sets=_sets(tmp_path / "late" / "encounters.csv", **monitor))
    assert list(second.stages)[:2] == ["ingest", "monitor"]  # judged before train runs
    found = storage.committed(second.stage("monitor").outputs["accuracy"]).metrics["monitor"]
    predictions = storage.open_dataset(first.stage("score").outputs["predictions"]).to_table()
    outcomes = pacsv.read_csv(tmp_path / "late" / "encounters.csv")
    matured = outcomes.filter(pc.is_valid(outcomes.column("readmitted_30d")))
    # every prediction whose outcome is known now (a few discharges are after the snapshot)
    assert found["scorings"] == ["first"] and found["matched"] == pc.sum(pc.is_in(
        predictions.column("encounter_id"), matured.column("encounter_id"))).as_py()
    assert {s["segment"] for s in found["by_segment"]} == \
        set(predictions.column("segment").to_pylist())
    # each model against its own training figure, from the card score recorded
    trained = storage.committed(first.stage("score").outputs["predictions"]).metrics["trained"]
    for model in found["by_model"]:
        assert model["training"] == pytest.approx(trained[model["model_version"]]["auc_valid"],
                                                  abs=1e-6)
    # ~250 outcomes a month: the drop shows from the change on, through noise of about 0.04
    months = {m["month"]: m for m in found["by_month"] if m["judged"]}
    before = [m for k, m in months.items() if k < "2024-01"]
    after = [m for k, m in months.items() if k >= "2024-01"]
    assert len(before) == 6 and len(after) == 12 and not any(m["degraded"] for m in before)
    assert sum(m["degraded"] for m in after) >= 8 and months["2024-01"]["degraded"]
    registry = client.registry("readmission-fleet")
    judged = [m for m in found["by_model"] if m["judged"]]
    assert judged
    for model in judged:
        marked = registry.health(model["model_segment"], model["model_version"])
        assert marked is not None and marked["degraded"] == model["degraded"]
        assert marked["run_id"] == "second"
    # ... and the same run's promotion gate reads it: a degraded champion comes first
    degraded = {m["model_segment"]: m["model_version"] for m in judged if m["degraded"]}
    assert degraded
    for segment, version in degraded.items():
        decision = registry.decision(segment, "second")
        assert decision is not None and decision["champion_version"] == version
        assert decision["reason"].startswith(f"champion {version} is degraded: auc ")
