"""Storage faults and concurrent launchers, end to end through the real CLI.

A fault-injecting proxy (tests/faulty_s3.py) sits on loopback between every
batchline process (the launcher and its stage subprocesses) and moto's S3. A
run under faults either succeeds with the fingerprints of a clean run, or
fails with the documented message and then resumes to those fingerprints.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import boto3
import pytest
from conftest import BATCHLINE, ROOT, SPEC, eventually, fingerprints, run_cli
from faulty_s3 import FaultyS3, Rule

from batchline import storage
from batchline.demo_data import generate
from batchline.manifest import RunManifest

pytestmark = pytest.mark.slow
RUN = "faulty"
FAST = ["--set", "stages.train.params.num_boost_round=60"]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate(4_000, out, seed=5)
    return out / "encounters.csv"


@pytest.fixture
def source(small_csv: Path, s3_bucket: str) -> str:
    uri = f"{s3_bucket}/landing/encounters.csv"
    storage.write_bytes(uri, small_csv.read_bytes())
    return uri


def _run(root: str, source: str, *args: str, env: dict[str, str] | None = None,
         command: str = "run") -> subprocess.CompletedProcess[str]:
    if command == "resume":
        return run_cli("resume", RUN, "--storage", root, env=env)
    return run_cli("run", str(SPEC), "--storage", root, "--run-id", RUN, *FAST,
                   "--set", f"stages.ingest.params.source={source}", *args, env=env)


@pytest.mark.parametrize("rate", [0.02, 0.10, 0.30])
def test_runs_under_faults_succeed_or_resume_to_a_clean_result(
        rate: float, moto_server: str, s3_bucket: str, source: str) -> None:
    clean = _run(f"{s3_bucket}/clean", source)
    assert clean.returncode == 0, clean.stderr
    root = f"{s3_bucket}/faults"
    with FaultyS3(moto_server, seed=int(rate * 100), max_seconds=600) as proxy:
        proxy.arm(Rule(rate=rate, stall_seconds=2))
        faulty = _run(root, source, env={"AWS_ENDPOINT_URL": proxy.url})
    assert "Traceback" not in faulty.stderr
    assert sum(proxy.counts.faults.values()) > 0, proxy.counts
    if faulty.returncode != 0:
        assert faulty.returncode == 3, faulty.stderr
        assert "cannot" in faulty.stderr and "resume" in faulty.stderr, faulty.stderr
        resumed = _run(root, source, command="resume")
        assert resumed.returncode == 0, resumed.stderr
    assert fingerprints(root, RUN) == fingerprints(f"{s3_bucket}/clean", RUN)


def test_eight_seconds_of_throttling_on_log_uploads_is_ridden_out(
        moto_server: str, s3_bucket: str, source: str) -> None:
    root = f"{s3_bucket}/logs503"
    with FaultyS3(moto_server, max_seconds=600) as proxy:
        proxy.arm(Rule(rate=1.0, faults=("throttle",), path=r"/logs/", methods=("PUT", "POST"),
                       stop=8.0, from_first_match=True))
        result = _run(root, source, env={"AWS_ENDPOINT_URL": proxy.url})
    assert result.returncode == 0, result.stderr
    assert proxy.counts.faults["throttle"] > 0
    manifest = RunManifest.load(root, RUN)
    for entry in manifest.stages.values():
        assert all(storage.read_text(uri).strip() for a in entry.attempts for uri in a.logs)


def test_the_endpoint_going_away_fails_clearly_and_resumes(
        moto_server: str, s3_bucket: str, source: str) -> None:
    root = f"{s3_bucket}/gone"
    with FaultyS3(moto_server, max_seconds=600) as proxy:
        env = {**os.environ, "COLUMNS": "200", "AWS_ENDPOINT_URL": proxy.url,
               "BATCHLINE_STORAGE_RETRY_SECONDS": "5"}
        launcher = subprocess.Popen(
            [*BATCHLINE, "run", str(SPEC), "--storage", root, "--run-id", RUN, *FAST,
             "--set", f"stages.ingest.params.source={source}"], env=env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Once the run has a manifest (seen on moto itself), every request fails:
        # the store is gone for good, mid-run, however busy the machine is.
        eventually(lambda: storage.exists(f"{root}/runs/{RUN}/manifest.json"), timeout=120,
                   what="the run's manifest", interval=0.05)
        proxy.arm(Rule(rate=1.0, faults=("reset",)))
        stdout, stderr = launcher.communicate(timeout=600)
    result = subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)
    assert result.returncode == 3, result.stderr  # an outage, not a configuration error
    assert "Traceback" not in result.stderr
    assert f"the object store at {proxy.url} (AWS_ENDPOINT_URL) kept failing" in \
        result.stderr.replace("\n", " "), result.stderr
    resumed = _run(root, source, command="resume")
    assert resumed.returncode == 0, resumed.stderr
    assert RunManifest.load(root, RUN).state == "succeeded"


@pytest.mark.parametrize("launchers", [2, 4])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_launchers_started_at_once_on_one_run_id(launchers: int, where: str, tmp_path: Path,
                                                 small_csv: Path, s3_bucket: str,
                                                 moto_server: str) -> None:
    root = str(tmp_path / "store") if where == "local" else f"{s3_bucket}/race"
    procs = [subprocess.Popen([*BATCHLINE, "run", str(SPEC), "--storage", root, "--run-id",
                               RUN, *FAST, "--set", f"stages.ingest.params.source={small_csv}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(launchers)]
    outcomes = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0] + [2] * (launchers - 1), outcomes
    for code, err in outcomes:
        if code == 2:
            assert "run is being run by launcher pid" in err and "Traceback" not in err
    manifest = RunManifest.load(root, RUN)
    assert manifest.state == "succeeded"
    for entry in manifest.stages.values():
        assert len(entry.attempts) == 1  # nobody else started an attempt
        for uri in entry.outputs.values():
            assert storage.verify(uri, storage.committed(uri), checksums=True) == []
    if where == "s3":
        name = s3_bucket.removeprefix("s3://")
        keys = boto3.client("s3").list_objects_v2(Bucket=name, Prefix="race/")["Contents"]
        assert not [k["Key"] for k in keys if k["Key"].endswith("lease.json")]  # released
