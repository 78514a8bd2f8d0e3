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
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import BATCHLINE, ROOT, SPEC, eventually, fingerprints, run_cli
from kube_cluster import Cluster, PodmanKubelet

from batchline import layout, storage
from batchline.manifest import RunManifest
from batchline.spec import load_spec
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

    stages = tuple(s for s in STAGES if s in load_spec(SPEC).stages)  # monitor: optional
    assert len(kubelet.jobs) == len(stages)  # one Job per stage, each run in a container
    assert kubelet.images == [f"localhost/batchline-{stage}:0.1.0" for stage in stages]
    manifest = RunManifest.load(k8s_root, RUN_ID)
    assert manifest.backend == "kubernetes"
    for stage in stages:
        assert manifest.stage(stage).state == "succeeded"
        logs = storage.read_text(layout.log_uri(k8s_root, RUN_ID, stage, 1))
        assert logs.strip(), f"no log copied for {stage}"
    assert fingerprints(k8s_root, RUN_ID) == fingerprints(local_root, RUN_ID)


def test_a_launcher_whose_pod_goes_away_leaves_its_stage_to_the_next_which_adopts_it(
        moto_server: str, s3_bucket: str, demo_csv: Path, tmp_path: Path) -> None:
    """An evicted launcher pod (SIGTERM, with BATCHLINE_ON_SIGTERM=detach as launcher Jobs
    set it) lets go of the run and leaves train's Job running; the launcher that replaces
    it (`resume`, as the replacement pod runs) adopts that Job: one Job, one attempt."""
    source = f"{s3_bucket}/source/encounters.csv"
    storage.write_bytes(source, demo_csv.read_bytes())
    root, run_id = f"{s3_bucket}/evicted", "evicted"
    cluster = Cluster(namespace="batchline")
    cluster.create_secret("batchline-aws", {key: os.environ[key] for key in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    kubelet = PodmanKubelet(cluster, tmp_path).start()
    try:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
               "BATCHLINE_ON_SIGTERM": "detach", "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"}
        first = subprocess.Popen(
            [*BATCHLINE, "run", str(SPEC), "--storage", root, "--run-id", run_id,
             "--set", f"stages.ingest.params.source={source}", "--backend", "kubernetes",
             "--secret", "batchline-aws"], env=env, cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        eventually(lambda: any("-train-" in job for job in kubelet.jobs) or
                   first.poll() is not None, timeout=600, what="train's Job")
        first.send_signal(signal.SIGTERM)  # the launcher's pod is evicted
        _out, err = first.communicate(timeout=120)
        assert first.returncode == 143, err
        assert "let go of the run" in err
        left = RunManifest.load(root, run_id)
        assert left.state == "running" and left.stage("train").state == "running"
        assert [a.ended_at for a in left.stage("train").attempts] == [None]

        replacement = run_cli("resume", run_id, "--storage", root, "--backend", "kubernetes",
                              "--secret", "batchline-aws", env=env, timeout=900)
        assert replacement.returncode == 0, replacement.stderr
    finally:
        kubelet.stop()
        cluster.close()
    assert kubelet.errors == []
    manifest = RunManifest.load(root, run_id)
    assert manifest.state == "succeeded"
    assert [a.number for a in manifest.stage("train").attempts] == [1]
    assert [job for job in kubelet.jobs if "-train-" in job] == [f"{run_id}-train-a1"]
    assert len(kubelet.jobs) == len(load_spec(SPEC).stages)  # nothing ran twice
