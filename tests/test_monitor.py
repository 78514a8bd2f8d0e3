"""monitor: matured outcomes joined to earlier runs' predictions, judged against training."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
import yaml
from conftest import ROOT, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline import storage
from batchline.manifest import RunManifest, list_runs
from batchline.params import MonitorParams
from batchline.stages.accuracy import Judge
from batchline.stages.monitor import _groups

# The demo's spec with the optional monitor stage, as docs/monitoring.md shows it.
MONITOR = {"label": "readmitted_30d", "id_columns": ["encounter_id"],
           "time_column": "discharge_date", "segment_column": "hospital_id"}


def test_a_group_is_judged_only_with_enough_outcomes_of_both_classes() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(1_000) < 0.2).astype(float)
    good = np.clip(y * 0.3 + rng.random(1_000) * 0.7, 0, 1)  # informative: AUC about 0.7+
    noise = rng.random(1_000)  # AUC about 0.5
    judge = Judge("auc", tolerance=0.05, min_labelled=200)
    kept = judge.group(y, good, training=0.72, month="2024-01")
    assert kept["judged"] and not kept["degraded"] and kept["auc"] > 0.72
    lost = judge.group(y, noise, training=0.72, month="2024-02")
    assert lost["judged"] and lost["degraded"] and abs(lost["auc"] - 0.5) < 0.06
    assert judge.describe(lost, "month 2024-02").startswith(
        f"month 2024-02: auc {lost['auc']:.4f} on 1,000 matured outcomes against 0.7200")
    few = judge.group(y[:50], noise[:50], training=0.72)
    assert not few["judged"] and not few["degraded"] and few["auc"] is not None
    one_class = judge.group(np.zeros(500), noise[:500], training=0.72)
    assert one_class["auc"] is None and not one_class["judged"]
    unknown = judge.group(y, noise, training=None)  # no figure at training: recorded only
    assert not unknown["judged"]
    # log loss and calibration: lower is better, so a rise is what degrades
    worse = Judge("logloss", 0.05, 200).group(y, np.full(1_000, 0.9), training=0.45)
    assert worse["degraded"] and worse["logloss"] > 1.0


def test_columns_are_plain_names_so_they_can_be_quoted_into_sql() -> None:
    with pytest.raises(ValueError, match="id_columns"):
        MonitorParams(label="y", id_columns=['id" OR 1=1 --'])
    with pytest.raises(ValueError, match="also one of id_columns"):
        MonitorParams(label="id", id_columns=["id"])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["H1", "H2", "H10", "x"])), max_size=60))
def test_groups_hold_every_keyed_row_once(keys: list[str | None]) -> None:
    array = np.array(keys, dtype=object)
    found = {key: sorted(idx.tolist()) for key, idx in _groups(array)}
    expected: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            expected.setdefault(key, []).append(i)
    assert found == expected


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    """The same encounters twice: an early snapshot whose last 18 months are still to
    score, and the same rows once every outcome matured. The label model changes on
    2024-01-01, six months into the scored period."""
    base = tmp_path_factory.mktemp("monitor")
    spec = yaml.safe_load((ROOT / "jobs" / "readmission.yaml").read_text(encoding="utf-8"))
    spec["stages"]["monitor"] = {"params": MONITOR}
    (base / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    for name, days in (("early", "548"), ("late", "0")):
        done = run_cli("demo-data", "--rows", "40000", "--seed", "7", "--population-days",
                       days, "--label-change", "2024-01-01", "--out", str(base / name))
        assert done.returncode == 0, done.stderr
    return (base / "early" / "encounters.csv", base / "late" / "encounters.csv", base / "data",
            str(base / "spec.yaml"))


@pytest.mark.slow
def test_the_monitor_shows_the_drop_in_the_month_the_label_model_changed(
        months: tuple[Path, Path, Path, str]) -> None:
    early, late, root, spec = months
    first = run_cli("run", spec, "--storage", str(root),
                    "--set", f"stages.ingest.params.source={early}")
    assert first.returncode == 0, first.stderr
    # the first run has nothing earlier to judge: it says so and succeeds
    assert "no earlier scoring run of pipeline 'readmission'" in first.stderr + first.stdout
    scored, _ = list_runs(str(root))
    scoring_run = scored[-1].run_id

    second = run_cli("run", spec, "--storage", str(root), "--stages", "ingest,monitor",
                     "--set", f"stages.ingest.params.source={late}")
    assert second.returncode == 0, second.stderr
    out = second.stdout + second.stderr
    assert "monitor: outcomes_matched" in out and "degraded month 2024-01" in out
    runs, _ = list_runs(str(root))
    manifest = RunManifest.load(str(root), runs[-1].run_id)
    record = storage.committed(manifest.stage("monitor").outputs["accuracy"])
    monitor = record.metrics["monitor"]
    assert monitor["scorings"] == [scoring_run]
    by_month = {m["month"]: m for m in monitor["by_month"]}
    judged = [m for m in sorted(by_month) if by_month[m]["judged"]]
    assert judged[0] == "2023-07" and judged[-1] == "2024-12"
    # before the change every month holds its training AUC; from its month on, none does
    assert [m for m in judged if by_month[m]["degraded"]] == [m for m in judged
                                                            if m >= "2024-01"]
    drops = {m: by_month[m]["training"] - by_month[m]["auc"] for m in judged}
    assert all(drops[m] < 0.03 for m in judged if m < "2024-01")
    assert all(drops[m] > 0.05 for m in judged if m >= "2024-01")
    # the scoring run and its one model are judged on all their matured outcomes
    (run,) = monitor["by_run"]
    assert run["run_id"] == scoring_run and run["labelled"] == monitor["matched"] > 10_000
    train = RunManifest.load(str(root), scoring_run).stage("train").metrics
    assert run["training"] == pytest.approx(train["auc_valid"], abs=1e-6)
    (model,) = monitor["by_model"]
    assert model["model_version"] == train["model_version"] and model["degraded"]
    assert manifest.stage("monitor").metrics["degraded_alerts"] == 1
    listed = run_cli("runs", "--storage", str(root))
    assert f"outcomes_matched {monitor['matched']:,}, degraded_alerts 1" in listed.stdout
    # per hospital too, worst first; and every group is a row of the accuracy dataset
    assert len(monitor["by_segment"]) == 60
    gaps = [s["training"] - s["auc"] for s in monitor["by_segment"] if s["degraded"]]
    assert gaps == sorted(gaps, reverse=True)
    table = storage.open_dataset(manifest.stage("monitor").outputs["accuracy"]).to_table()
    assert sorted(set(table["level"].to_pylist())) == ["model", "month", "run", "segment"]
    assert table.num_rows == sum(len(monitor[k]) for k in
                                 ("by_run", "by_model", "by_month", "by_segment"))

    # Five scored encounters twice among the outcomes, with opposite labels: which is
    # true cannot be told, so neither is used, and the summary says so.
    outcomes = pacsv.read_csv(late)
    scored = outcomes.filter(pc.greater_equal(outcomes["discharge_date"],
                                              pa.scalar(date(2024, 6, 1))))
    twins = scored.slice(0, 5)
    twins = twins.set_column(twins.schema.get_field_index("readmitted_30d"), "readmitted_30d",
                             pc.subtract(pa.scalar(1, pa.int64()), twins["readmitted_30d"]))
    pacsv.write_csv(pa.concat_tables([outcomes, twins]), root.parent / "twins.csv")
    # (the demo spec's ingest refuses repeated ids: here it only warns, to let them reach
    # the monitor)
    third = run_cli("run", spec, "--storage", str(root), "--stages", "ingest,monitor",
                    "--set", f"stages.ingest.params.source={root.parent / 'twins.csv'}",
                    "--set", "stages.ingest.params.checks.columns.encounter_id.on_fail=warn")
    assert third.returncode == 0, third.stderr
    assert "encounter_id" in third.stdout and "check warned" in third.stdout
    assert "5 ids appear more than once among the outcomes" in third.stdout + third.stderr
    runs, _ = list_runs(str(root))
    again = storage.committed(runs[-1].stage("monitor").outputs["accuracy"]).metrics
    assert again["monitor"]["matched"] == monitor["matched"] - 5


def test_a_time_column_that_is_not_there_is_exit_2_and_named(
        months: tuple[Path, Path, Path, str], tmp_path: Path) -> None:
    _, late, _, spec = months
    done = run_cli("run", spec, "--storage", str(tmp_path / "data"), "--stages",
                   "ingest,monitor", "--set", f"stages.ingest.params.source={late}",
                   "--set", "stages.monitor.params.time_column=discharged_on")
    assert done.returncode == 2, done.stderr
    assert "stages.monitor.params.time_column" in done.stderr
    assert "discharged_on" in done.stderr
    runs, _ = list_runs(str(tmp_path / "data"))
    stage = RunManifest.load(str(tmp_path / "data"), runs[-1].run_id).stage("monitor")
    assert stage.state == "failed" and "discharged_on" in stage.error
    accuracy = storage.join(str(tmp_path / "data"), "runs", runs[-1].run_id, "monitor",
                            "accuracy", "_SUCCESS.json")
    assert not storage.exists(accuracy)  # nothing committed


@pytest.mark.podman
def test_the_monitor_image_judges_earlier_runs_on_s3(
        months: tuple[Path, Path, Path, str], stage_images: dict[str, str], s3_bucket: str,
        moto_server: str) -> None:
    """The monitor stage in its own image (read-only root, no credentials baked in) finds
    the earlier scoring run on S3 and joins its predictions there."""
    early, late, _, spec = months
    s3 = boto3.client("s3", endpoint_url=moto_server)
    for name, path in (("early.csv", early), ("late.csv", late)):
        s3.upload_file(str(path), s3_bucket.removeprefix("s3://"), f"landing/{name}")
    root = f"{s3_bucket}/store"
    first = run_cli("run", spec, "--storage", root,
                    "--set", f"stages.ingest.params.source={s3_bucket}/landing/early.csv")
    assert first.returncode == 0, first.stderr
    second = run_cli("run", spec, "--storage", root, "--backend", "container",
                     "--stages", "ingest,monitor",
                     "--set", f"stages.ingest.params.source={s3_bucket}/landing/late.csv")
    assert second.returncode == 0, second.stdout + second.stderr
    runs, _ = list_runs(root)
    monitor = storage.committed(runs[-1].stage("monitor").outputs["accuracy"]).metrics[
        "monitor"]
    assert monitor["scorings"] == [runs[0].run_id] and monitor["matched"] > 10_000
    degraded = [m["month"] for m in monitor["by_month"] if m["degraded"]]
    assert degraded[0] == "2024-01"
    assert runs[-1].stage("monitor").attempts[-1].backend_ref  # it ran in a container
