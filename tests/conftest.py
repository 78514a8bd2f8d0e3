"""Shared fixtures: moto's real S3 server over HTTP, demo data, CLI runner.

Append new fixtures at the end; keep each one's setup honest (real servers,
real processes), never a monkeypatched client.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchline import storage
from batchline.demo_data import generate
from batchline.stages import STAGES
from batchline.task import StageTask

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "jobs" / "readmission.yaml"
BATCHLINE = [sys.executable, "-m", "batchline.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What the stage entrypoint writes into its own environment (cpu.apply): a test
# that runs a stage in this process must not pass its CPU budget on to every
# stage process a later test starts (their thread counts, and so the models'
# bytes, would differ from a clean run's).
STAGE_CPU_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "BATCHLINE_STAGE_CPUS")


@pytest.fixture(autouse=True)
def _stage_cpu_env_stays_in_its_test() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in STAGE_CPU_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3/SQS/SageMaker server on loopback; AWS_* env points every client at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"})
    storage._FS_CACHE.clear()
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    storage._FS_CACHE.clear()


@pytest.fixture
def s3_bucket(moto_server: str) -> str:
    """A fresh, empty bucket on the moto server; returns s3://name."""
    import boto3

    name = f"bl-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 demo encounters as CSV, generated once per session."""
    out = tmp_path_factory.mktemp("demo")
    generate(20_000, out, seed=3)
    return out


@pytest.fixture
def demo_csv(demo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo CSV (and its _generator.json) for one test."""
    target = tmp_path / "source"
    shutil.copytree(demo_dir, target)
    return target / "encounters.csv"


def eventually(check: Callable[[], object], timeout: float = 10.0, what: str = "",
               interval: float = 0.02) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `batchline` CLI in a subprocess, as a user would."""
    return subprocess.run([*BATCHLINE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "COLUMNS": "200"},
                          cwd=cwd or ROOT, check=False)


def fingerprints(root: str, run_id: str) -> dict[str, str]:
    """Every committed output's fingerprint (checksums of its files) in one run."""
    from batchline.manifest import RunManifest

    manifest = RunManifest.load(root, run_id)
    out = {}
    for stage, entry in manifest.stages.items():
        for name, uri in entry.outputs.items():
            out[f"{stage}.{name}"] = storage.committed(uri).fingerprint
    return out


IMAGES = (*STAGES, "launcher")


def _missing_images(refs: list[str]) -> list[str]:
    if shutil.which("podman") is None:
        return refs
    return [ref for ref in refs
            if subprocess.run(["podman", "image", "exists", ref], check=False).returncode]


@pytest.fixture(scope="session")
def stage_images() -> dict[str, str]:
    """The built stage and launcher images; built once (`make podman base-image images`)
    when any is missing, so a fresh CI machine's test run makes its own."""
    from batchline.spec import load_spec

    spec = load_spec(SPEC)
    images = {name: spec.image(name) for name in IMAGES}
    if _missing_images(list(images.values())):
        subprocess.run(["make", "podman", "base-image", "images"], cwd=ROOT, check=True,
                       timeout=1800)
    missing = _missing_images(list(images.values()))
    assert not missing, f"images {missing} are still missing after `make images`"
    return images


# Feature SQL that would run for hours (a sum over 10^12 generated rows): a
# realistic runaway query for deadline tests. DuckDB stays inside C code, so
# SIGTERM is not seen and the backend must escalate to SIGKILL.
RUNAWAY_FEATURES = {"sql": "SELECT encounter_id, (SELECT sum(range) FROM range(1000000000000))"
                           " AS n FROM encounters"}


def committed_encounters(root: str, demo_csv: Path) -> str:
    """Ingest the demo CSV in this process and return the committed dataset's URI."""
    from batchline import layout
    from batchline.spec import load_spec
    from batchline.stage import run_task
    from batchline.task import StageTask

    params = load_spec(SPEC).params("ingest").model_dump(mode="json")
    params["source"] = str(demo_csv)
    task = StageTask(run_id="upstream", stage="ingest", inputs={}, params=params,
                     outputs={o: layout.output_uri(root, "upstream", "ingest", o)
                              for o in STAGES["ingest"].outputs},
                     storage_root=root, task_uri="", cache_key="k", image="")
    run_task(task)
    return task.outputs["encounters"]


def ingest_task(root: Path, params: dict[str, object], write: bool = True) -> StageTask:
    """An ingest task whose outputs live under `root`, stored at its task URI."""
    task = StageTask(run_id="r", stage="ingest", inputs={},
                     outputs={"encounters": str(root / "enc"), "quarantine": str(root / "q")},
                     params=dict(params), storage_root=str(root),
                     task_uri=str(root / "task.json"), cache_key="k")
    if write:
        storage.write_text(task.task_uri, task.to_json())
    return task


SAGEMAKER_ROLE = "arn:aws:iam::123456789012:role/batchline-sagemaker"


@pytest.fixture(scope="module")
def sagemaker_harness(moto_server: str, stage_images: dict[str, str],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One SageMaker stand-in per module (tests/sagemaker_harness.py): the SageMaker API on
    loopback running the real stage images with podman; S3 and CloudWatch Logs stay on
    moto. AWS_ENDPOINT_URL_SAGEMAKER points the SDK at it for the module only."""
    from sagemaker_harness import SageMakerHarness

    # ml.t3.medium is made tiny here, so tests can provoke an out-of-memory kill.
    harness = SageMakerHarness(tmp_path_factory.mktemp("sagemaker"), grace_seconds=1,
                               instance_memory={"ml.t3.medium": "192m"}).start()
    saved = os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER")
    os.environ["AWS_ENDPOINT_URL_SAGEMAKER"] = harness.url
    yield harness
    harness.close()
    if saved is None:
        os.environ.pop("AWS_ENDPOINT_URL_SAGEMAKER", None)
    else:
        os.environ["AWS_ENDPOINT_URL_SAGEMAKER"] = saved
    assert harness.errors == []


def sagemaker_backend(**options: object) -> object:
    """The sagemaker backend as users build it, polling fast, with a session of its own."""
    import boto3

    from batchline.backends.sagemaker import SageMakerBackend

    return SageMakerBackend(role_arn=SAGEMAKER_ROLE, poll_seconds=0.2,
                            session=boto3.Session(region_name="us-east-1"), **options)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the event tests counted (record_property("counts", ...)), shown in every run's
    summary, CI's included: how many runs, duplicates and poison messages each one saw."""
    lines = [f"{report.nodeid}: {value}"
             for report in terminalreporter.stats.get("passed", [])
             for key, value in getattr(report, "user_properties", []) if key == "counts"]
    if lines:
        terminalreporter.write_sep("-", "event-triggered runs: counts")
        for line in lines:
            terminalreporter.write_line(line)
