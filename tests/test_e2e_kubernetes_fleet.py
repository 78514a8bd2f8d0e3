"""A fleet on the Kubernetes harness: train as one Indexed Job, the registry on S3.

The stage images run in podman (`PodmanKubelet`, as in test_e2e_kubernetes.py);
storage and the registry are moto's S3. train's two shards are the two
completion indexes of one Indexed Job; the workers register their models and
judge them with the storage client every image has, and the launcher moves
the aliases by S3 conditional writes once the fleet is judged. Scaled down
for CI (50 hospitals); `make bench-fleet` runs 500 on the local backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from conftest import ROOT, run_cli
from kube_cluster import Cluster, PodmanKubelet

from batchline import fleet, storage
from batchline.client import Client
from batchline.demo_data import generate
from batchline.registry_serving import serving_uri

pytestmark = [pytest.mark.slow, pytest.mark.podman]

FLEET = ROOT / "jobs" / "readmission_fleet.yaml"
HOSPITALS = 50


def test_a_fleet_trains_as_one_indexed_job_and_the_launcher_promotes_on_s3(
        moto_server: str, s3_bucket: str, tmp_path: Path) -> None:
    generate(25_000, tmp_path / "data", seed=11, hospitals=HOSPITALS, fleet=True)
    source = f"{s3_bucket}/source/encounters.csv"
    storage.write_bytes(source, (tmp_path / "data" / "encounters.csv").read_bytes())
    root = f"{s3_bucket}/store"

    cluster = Cluster(namespace="batchline")
    cluster.create_secret("batchline-aws", {key: os.environ[key] for key in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    kubelet = PodmanKubelet(cluster, tmp_path).start()
    try:
        result = run_cli(
            "run", str(FLEET), "--storage", root, "--run-id", "fleet-k8s",
            "--set", f"stages.ingest.params.source={source}", "--set", "segments.min_rows=150",
            "--set", "stages.train.params.num_boost_round=40",
            "--set", "promote.max_calibration_error=0.5", "--set", "promote.min_rows=0",
            "--backend", "kubernetes", "--secret", "batchline-aws",
            env={"KUBECONFIG": str(cluster.kubeconfig(tmp_path / "kubeconfig"))}, timeout=1200)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    finally:
        kubelet.stop()
        cluster.close()
    assert kubelet.errors == []

    # train ran once, as one Indexed Job of two completion indexes.
    train_jobs = [job for job in kubelet.jobs if "-train-" in job]
    assert train_jobs == ["fleet-k8s-train-a1"]
    assert sorted(r.index for r in kubelet.runs if r.job == train_jobs[0]) == [0, 1]  # type: ignore[type-var]

    client = Client(root)
    board = {row["segment"]: row for row in client.leaderboard("fleet-k8s")}
    labels = pacsv.read_csv(tmp_path / "data" / "encounters.csv").column("hospital_id")
    hospitals = {c["values"] for c in pc.value_counts(labels).to_pylist()}
    assert set(board) == {fleet.GLOBAL} | hospitals  # every hospital listed
    own = [k for k, r in board.items() if r["status"] == fleet.OK]
    assert fleet.GLOBAL in own and len(own) > HOSPITALS // 2

    # Every model with its own row is the champion in the registry on S3, moved by the
    # launcher (the workers only judged), its decision recorded as it ended.
    registry = client.registry("readmission-fleet")
    for key in own:
        champion = registry.alias(key)
        assert champion is not None and champion.run_id == "fleet-k8s"
        assert champion.version == board[key]["model_version"]
        assert board[key]["decision"]["promoted"] is True, board[key]
    # The serving snapshot a scoring-only run reads: every champion, on S3.
    snapshot = storage.committed(serving_uri(registry))
    assert snapshot.metrics["champions"] == {k: board[k]["model_version"] for k in own}
    listed = json.loads(run_cli("models", "list", "--storage", root, "--json").stdout)
    assert {r["segment"] for r in listed if r["champion"]} == set(own)
