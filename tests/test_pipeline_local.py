"""The demo pipeline end to end through the real CLI, on local storage and S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import boto3
import pytest
from conftest import BATCHLINE, ROOT, SPEC, eventually, fingerprints, run_cli

from batchline import storage
from batchline.demo_data import generate
from batchline.manifest import RunManifest
from batchline.spec import load_spec

# the demo spec's stages (the catalog's optional monitor is not among them)
STAGES = tuple(load_spec(SPEC).stages)

pytestmark = pytest.mark.slow


def _run(source: Path | str, root: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", str(SPEC), "--storage", str(root),
                   "--set", f"stages.ingest.params.source={source}", *extra)


def _states(root: Path | str, run_id: str) -> dict[str, str]:
    manifest = RunManifest.load(str(root), run_id)
    return {s: str(e.state) for s, e in manifest.stages.items()}


def test_demo_end_to_end_then_cached_rerun(demo_csv: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = _run(demo_csv, root, "--run-id", "first")
    assert first.returncode == 0, first.stderr
    assert "train: auc_valid 0." in first.stdout and "generator_best_auc 0." in first.stdout
    assert _states(root, "first") == dict.fromkeys(STAGES, "succeeded")
    generator = json.loads((demo_csv.parent / "_generator.json").read_text())
    manifest = RunManifest.load(str(root), "first")
    predictions = storage.open_dataset(manifest.stage("score").outputs["predictions"])
    table = predictions.to_table()
    assert table.num_rows == generator["population"]
    assert set(table.column("run_id").to_pylist()) == {"first"}
    assert table.column("model_version").to_pylist()[0] == \
        manifest.stage("train").metrics["model_version"]
    assert 0.0 < min(table.column("score").to_pylist()) < max(table.column("score").to_pylist())
    for stage in STAGES:
        assert storage.list_dir(str(root / "runs" / "first" / stage / "logs")) == ["attempt-1.log"]

    second = _run(demo_csv, root, "--run-id", "second")
    assert second.returncode == 0, second.stderr
    assert ": 4 reused;" in second.stdout
    assert fingerprints(str(root), "second") == fingerprints(str(root), "first")
    explain = run_cli("explain", "second", "--storage", str(root)).stdout
    assert explain.count(": reused (outputs committed by run first") == 4

    third = _run(demo_csv, root, "--run-id", "third", "--set", "stages.train.params.num_leaves=15")
    assert third.returncode == 0, third.stderr
    assert _states(root, "third") == {"ingest": "reused", "features": "reused",
                                      "train": "succeeded", "score": "succeeded"}
    explain = run_cli("explain", "third", "--storage", str(root)).stdout
    assert "param num_leaves changed (31 -> 15)" in explain
    assert "input train.model changed" in explain

    status = run_cli("status", "third", "--storage", str(root))
    assert status.returncode == 0 and "succeeded" in status.stdout
    runs = run_cli("runs", "--storage", str(root))
    assert all(r in runs.stdout for r in ("first", "second", "third"))
    logs = run_cli("logs", "first", "train", "--storage", str(root))
    assert "stage train: committed" in logs.stdout


def test_stages_started_ahead_give_the_fingerprints_of_stages_started_cold(
        demo_csv: Path, tmp_path: Path) -> None:
    info = {"BATCHLINE_LOG_LEVEL": "INFO"}
    warm = run_cli("run", str(SPEC), "--storage", str(tmp_path / "warm"), "--run-id", "same",
                   "--set", f"stages.ingest.params.source={demo_csv}", env=info)
    cold = run_cli("run", str(SPEC), "--storage", str(tmp_path / "cold"), "--run-id", "same",
                   "--set", f"stages.ingest.params.source={demo_csv}", "--option", "warm=false",
                   env=info)
    assert warm.returncode == 0 and cold.returncode == 0, warm.stderr + cold.stderr
    ahead = [line.split("stage ")[1].split(":")[0] for line in warm.stderr.splitlines()
             if "running locally as pid" in line and "(started ahead)" in line]
    assert ahead == list(STAGES[1:])  # every stage but the first found its process ready
    assert "(started ahead)" not in cold.stderr
    assert fingerprints(str(tmp_path / "warm"), "same") == \
        fingerprints(str(tmp_path / "cold"), "same")


def test_score_only_run_and_sharded_score(demo_csv: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert _run(demo_csv, root, "--run-id", "full").returncode == 0
    only = _run(demo_csv, root, "--run-id", "scoreonly", "--stages", "score",
                "--set", "stages.score.shards=3")
    assert only.returncode == 0, only.stderr
    assert _states(root, "scoreonly") == {"ingest": "reused", "features": "reused",
                                          "train": "reused", "score": "succeeded"}
    whole = storage.open_dataset(
        RunManifest.load(str(root), "full").stage("score").outputs["predictions"]).to_table()
    sharded_uri = RunManifest.load(str(root), "scoreonly").stage("score").outputs["predictions"]
    sharded = storage.open_dataset(sharded_uri).to_table()
    assert sorted(sharded.column("encounter_id").to_pylist()) == \
        sorted(whole.column("encounter_id").to_pylist())
    assert sorted(sharded.column("score").to_pylist()) == sorted(whole.column("score").to_pylist())
    assert len(storage.list_dir(str(root / "runs" / "scoreonly" / "score" / "logs"))) == 3
    # The three shards ran at once on this host, each sizing its threads to a third.
    for log in (root / "runs" / "scoreonly" / "score" / "logs").rglob("*"):
        if log.is_file():
            assert "shared by 3 workers" in log.read_text(), log


def test_bad_input_fails_run_with_exit_2_and_commits_nothing(tmp_path: Path) -> None:
    src = tmp_path / "enc.csv"
    src.write_text("encounter_id,patient_id\n1,2\n")
    root = tmp_path / "store"
    result = _run(src, root, "--run-id", "bad")
    assert result.returncode == 2
    assert str(src) in result.stderr and "missing columns" in result.stderr
    assert "hospital_id" in result.stderr
    assert "batchline resume bad" in result.stderr
    assert "missing columns ['" in result.stderr  # brackets in messages print as they are
    assert "last log lines:" in result.stderr and "[dim]" not in result.stderr
    assert not list((root / "runs" / "bad").rglob("_SUCCESS.json"))
    assert not list((root / "runs" / "bad").rglob("*.parquet"))
    assert _states(root, "bad")["ingest"] == "failed"
    manifest = RunManifest.load(str(root), "bad")
    assert len(manifest.stage("ingest").attempts) == 1  # bad input is never retried
    logs = run_cli("logs", "bad", "ingest", "--storage", str(root))
    assert "missing columns" in logs.stdout
    status = run_cli("status", "bad", "--storage", str(root))
    assert "ingest: stage 'ingest' rejected its input" in status.stdout
    assert "missing columns ['" in status.stdout


def test_same_fingerprints_on_s3_as_on_local(demo_csv: Path, tmp_path: Path,
                                             s3_bucket: str, moto_server: str) -> None:
    local = _run(demo_csv, tmp_path / "store", "--run-id", "same")
    assert local.returncode == 0, local.stderr
    s3 = boto3.client("s3", endpoint_url=moto_server)
    bucket = s3_bucket.removeprefix("s3://")
    for name in ("encounters.csv", "_generator.json"):
        s3.upload_file(str(demo_csv.parent / name), bucket, f"landing/{name}")
    remote = _run(f"{s3_bucket}/landing/encounters.csv", f"{s3_bucket}/root", "--run-id", "same")
    assert remote.returncode == 0, remote.stderr
    assert "generator_best_auc 0." in remote.stdout
    assert fingerprints(f"{s3_bucket}/root", "same") == fingerprints(str(tmp_path / "store"),
                                                                     "same")
    again = _run(f"{s3_bucket}/landing/encounters.csv", f"{s3_bucket}/root", "--run-id", "again")
    assert ": 4 reused;" in again.stdout


def test_sigkill_mid_write_then_resume_gives_one_copy(tmp_path: Path) -> None:
    generate(300_000, tmp_path / "src", seed=5)
    source = tmp_path / "src" / "encounters.csv"
    clean_root, root = tmp_path / "clean", tmp_path / "store"
    assert _run(source, clean_root, "--run-id", "k").returncode == 0
    proc = subprocess.Popen([*BATCHLINE, "run", str(SPEC), "--storage", str(root), "--run-id",
                             "k", "--set", f"stages.ingest.params.source={source}"],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    features = root / "runs" / "k" / "features" / "features"
    # A tight poll: the kill must land while the part file is open.
    eventually(lambda: list(features.glob("data-*/part-*.parquet")), 120, "features to write",
               interval=0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the stage, like a lost node
    proc.wait()
    assert not (features / "_SUCCESS.json").exists(), "killed too late to test anything"
    assert list(features.glob("data-*/part-*.parquet")), "the half-written part is there"
    with pytest.raises(Exception, match="not committed"):
        storage.open_dataset(str(features))

    resumed = run_cli("resume", "k", "--storage", str(root))
    assert resumed.returncode == 0, resumed.stderr
    states = _states(root, "k")
    assert states["ingest"] == "reused" and states["features"] == "succeeded"
    assert fingerprints(str(root), "k") == fingerprints(str(clean_root), "k")
    manifest = RunManifest.load(str(root), "k")
    for entry in manifest.stages.values():
        for uri in entry.outputs.values():
            record = storage.committed(uri)
            prefixes = [n for n in storage.list_dir(uri) if n.startswith("data-")]
            assert len(prefixes) == 1, f"{uri} holds {prefixes}"
            assert storage.open_dataset(uri).count_rows() == record.rows if record.rows else True
    clean = RunManifest.load(str(clean_root), "k")
    for stage in ("ingest", "features", "score"):
        assert manifest.stage(stage).rows == clean.stage(stage).rows


def test_auc_close_to_generator_best(tmp_path: Path) -> None:
    summary = generate(200_000, tmp_path / "src", seed=11)
    result = _run(tmp_path / "src" / "encounters.csv", tmp_path / "store", "--run-id", "auc")
    assert result.returncode == 0, result.stderr
    auc = RunManifest.load(str(tmp_path / "store"), "auc").stage("train").metrics["auc_valid"]
    assert summary.best_auc_recent - auc < 0.02, (auc, summary)
