"""The readmission pipeline on the kubernetes backend, with real containers.

The `batchline` CLI runs in a subprocess with `--backend kubernetes` and a
kubeconfig pointing at kmock's API server on loopback. kmock runs no
controllers, so `PodmanKubelet` plays the cluster: each Job the launcher
creates is turned into a Pod from the Job's template and run with
`podman kube play --network host` from the stage images (`make images`); its
exit code and log are written back through the API. Storage is moto's S3.
The outputs must be byte-identical to the same run on the local backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SPEC, fingerprints, run_cli
from kube_cluster import Cluster, PodmanKubelet

from batchline import layout, storage
from batchline.manifest import RunManifest
from batchline.stages import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.podman]

RUN_ID = "e2e-k8s"


def _run(root: str, source: str, *extra: str, env: dict[str, str] | None = None) -> None:
    result = run_cli("run", str(SPEC), "--storage", root, "--run-id", RUN_ID,
                     "--set", f"stages.ingest.params.source={source}", *extra, env=env,
                     timeout=900)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_kubernetes_run_matches_local(moto_server: str, s3_bucket: str, demo_csv: Path,
                                      tmp_path: Path) -> None:
    source = f"{s3_bucket}/source/encounters.csv"
    storage.write_bytes(source, demo_csv.read_bytes())
    local_root, k8s_root = f"{s3_bucket}/local", f"{s3_bucket}/kubernetes"
    _run(local_root, source)

    cluster = Cluster(namespace="batchline")
    # The pods get S3 keys from a Secret (envFrom); the endpoint and region
    # come from the launcher's environment (the CLI passes them on).
    cluster.create_secret("batchline-aws", {key: os.environ[key] for key in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    kubelet = PodmanKubelet(cluster, tmp_path).start()
    try:
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
        _run(k8s_root, source, "--backend", "kubernetes", "--secret", "batchline-aws",
             env={"KUBECONFIG": str(kubeconfig)})
    finally:
        kubelet.stop()
        cluster.close()
    assert kubelet.errors == []

    stages = tuple(STAGES)
    assert len(kubelet.jobs) == len(stages)  # one Job per stage, each run in a container
    assert kubelet.images == [f"localhost/batchline-{stage}:0.1.0" for stage in stages]
    manifest = RunManifest.load(k8s_root, RUN_ID)
    assert manifest.backend == "kubernetes"
    for stage in stages:
        assert manifest.stage(stage).state == "succeeded"
        logs = storage.read_text(layout.log_uri(k8s_root, RUN_ID, stage, 1))
        assert logs.strip(), f"no log copied for {stage}"
    assert fingerprints(k8s_root, RUN_ID) == fingerprints(local_root, RUN_ID)
