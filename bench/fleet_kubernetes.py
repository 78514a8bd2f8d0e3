"""The 500-hospital fleet on the Kubernetes harness: train as one Indexed Job, S3 on moto.

The same spec and data as `make bench-fleet` (local backend), run with
`--backend kubernetes`: the launcher talks to kmock's API server over HTTP
with the real client, `PodmanKubelet` (tests/kube_cluster.py) runs each Job's
pods from the stage images (`make images`) with podman, and storage and the
registry are moto's S3 server. train's shards are the completion indexes of
one Indexed Job. The launcher moves the registry's aliases once the fleet is
judged.

Prints the run's wall time and per-stage durations, the pods of train's Job,
and what the registry on S3 holds (champions, the serving snapshot, the
leaderboard) as one JSON line.
Usage: python bench/fleet_kubernetes.py DATA_DIR [--workdir build/bench-fleet-k8s]
(DATA_DIR from `batchline demo-data --hospitals 500 --rows 4000000 --out DATA_DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the harness: kmock's API server + PodmanKubelet

import boto3  # noqa: E402
from kube_cluster import Cluster, PodmanKubelet  # noqa: E402
from moto_local import start_moto  # noqa: E402

from batchline import fleet, storage  # noqa: E402
from batchline.manifest import RunManifest  # noqa: E402
from batchline.registry import Registry  # noqa: E402
from batchline.registry_serving import serving_uri  # noqa: E402

SPEC = ROOT / "jobs" / "readmission_fleet.yaml"
RUN_ID = "fleet-k8s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="folder with the fleet's encounters.csv")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-fleet-k8s")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    moto = start_moto()
    boto3.client("s3").create_bucket(Bucket="bench-fleet")
    source, root = "s3://bench-fleet/source/encounters.csv", "s3://bench-fleet/store"
    boto3.client("s3").upload_file(str(args.data / "encounters.csv"), "bench-fleet",
                                   "source/encounters.csv")

    cluster = Cluster(namespace="batchline")
    cluster.create_secret("batchline-aws", {"AWS_ACCESS_KEY_ID": "bench",
                                            "AWS_SECRET_ACCESS_KEY": "bench"})
    kubelet = PodmanKubelet(cluster, args.workdir).start()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig(args.workdir / "kubeconfig"))}
    started = time.monotonic()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "batchline.cli", "run", str(SPEC), "--storage", root,
             "--run-id", RUN_ID, "--set", f"stages.ingest.params.source={source}",
             "--backend", "kubernetes", "--secret", "batchline-aws"],
            env=env, cwd=ROOT, text=True, capture_output=True, timeout=7200)
        wall = time.monotonic() - started
    finally:
        kubelet.stop()
        cluster.close()
    sys.stderr.write(run.stdout + run.stderr)
    if run.returncode != 0 or kubelet.errors:
        print(f"run failed (exit {run.returncode}); harness errors {kubelet.errors}")
        return 1

    manifest = RunManifest.load(root, RUN_ID)
    model = manifest.stage("train").outputs["model"]
    board = fleet.read_leaderboard(model)
    registry = Registry(root, "readmission-fleet")
    champions = {s: a.version for s in registry.segments()
                 if (a := registry.alias(s)) is not None}
    train_job = f"{RUN_ID}-train-a1"
    result = {
        "wall_seconds": round(wall, 1),
        "stage_seconds": {name: round(s.ended_at - s.started_at, 1)
                          for name, s in manifest.stages.items()
                          if s.started_at and s.ended_at},
        "train_jobs": [j for j in kubelet.jobs if "-train-" in j],
        "train_pods": sorted((r.index, r.exit_code) for r in kubelet.runs
                             if r.job == train_job),
        "leaderboard_rows": len(board),
        "models": sum(r["status"] == fleet.OK for r in board),
        "failed": sum(r["status"] == fleet.FAILED for r in board),
        "fallback": sum(r["status"] == fleet.FALLBACK for r in board),
        "champions": len(champions),
        "champions_by_this_run": sum(registry.alias(s).run_id == RUN_ID  # type: ignore[union-attr]
                                     for s in champions),
        "serving_snapshot_champions": len(storage.committed(serving_uri(registry))
                                          .metrics["champions"]),
    }
    print(json.dumps(result))
    moto.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
