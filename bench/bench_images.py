"""Image sizes, and the per-stage start overhead of the container and SageMaker backends.

Runs the same tiny ingest task (ten rows, so the stage's own work is next to
nothing) five times on the local backend (a subprocess), five times on the
container backend (podman run of the ingest image) and five times on the
SageMaker backend against tests/sagemaker_harness.py (a Processing Job whose
image the harness runs with podman under the /opt/ml contract), all against
one moto S3 server on loopback, and reports the median wall time of each and
their differences. Appends a section to bench/results.md.

Usage: python bench/bench_images.py   (needs `make images`)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from moto_local import start_moto

from batchline import layout, storage
from batchline.backends.container import ContainerBackend
from batchline.backends.local import LocalBackend
from batchline.backends.sagemaker import SageMakerBackend
from batchline.spec import load_spec
from batchline.stages import STAGES
from batchline.task import StageTask

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "jobs" / "readmission.yaml"
IMAGES = (*STAGES, "launcher")
REPEATS = 5
ROLE = "arn:aws:iam::123456789012:role/bench"


def image_sizes() -> dict[str, float]:
    spec = load_spec(SPEC)
    sizes = {}
    for name in (*IMAGES, "base"):
        ref = spec.image(name) if name != "base" else "localhost/base-python:bookworm"
        out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", ref],
                             capture_output=True, text=True, check=True).stdout
        sizes[name] = int(out.strip()) / 1e6
    return sizes


def _task(root: str, attempt: int, image: str) -> StageTask:
    task = StageTask(
        run_id="bench", stage="ingest", inputs={},
        outputs={o: layout.output_uri(root, f"b{attempt}", "ingest", o)
                 for o in STAGES["ingest"].outputs},
        params={"source": "s3://bench/tiny.csv", "columns": {"a": "int64", "b": "string"}},
        storage_root=root, task_uri=layout.task_uri(root, "bench", "ingest", attempt),
        cache_key="k", image=image, attempt=attempt)
    storage.write_text(task.task_uri, task.to_json())
    return task


def start_overhead() -> dict[str, float]:
    server = start_moto()
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="bench")
    s3.put_object(Bucket="bench", Key="tiny.csv",
                  Body=b"a,b\n" + b"".join(f"{i},x\n".encode() for i in range(10)))
    image = load_spec(SPEC).image("ingest")
    medians = {}
    harness = _sagemaker_harness()
    try:
        backends: list[Any] = [LocalBackend(), ContainerBackend(), SageMakerBackend(
            role_arn=ROLE, poll_seconds=0.1, session=boto3.Session(region_name="us-east-1"))]
        for backend in backends:
            times = []
            for attempt in range(1, REPEATS + 1):
                task = _task(f"s3://bench/{backend.name}", attempt, image)
                started = time.monotonic()
                result = backend.wait(backend.submit(task))
                times.append(time.monotonic() - started)
                assert result.ok, result
            medians[backend.name] = statistics.median(times)
    finally:
        harness.close()
        server.stop()
    return medians


def _sagemaker_harness() -> Any:
    """The test suite's SageMaker stand-in, serving on loopback (needs root: it hands
    each job's /opt/ml to the image's user)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from sagemaker_harness import SageMakerHarness

    harness = SageMakerHarness(Path(tempfile.mkdtemp(prefix="bench-sagemaker-"))).start()
    os.environ["AWS_ENDPOINT_URL_SAGEMAKER"] = harness.url
    return harness


def main() -> None:
    sizes = image_sizes()
    medians = start_overhead()
    lines = [
        f"## Stage images, container and SageMaker start overhead "
        f"({time.strftime('%Y-%m-%d')})", "",
        "`python bench/bench_images.py`: sizes from `podman image inspect` (uncompressed); "
        f"start overhead = median of {REPEATS} runs of a ten-row ingest task on each backend "
        "against one moto S3 server (podman 4.3, runc, cgroupfs); sagemaker = a Processing "
        "Job on tests/sagemaker_harness.py (the SageMaker API on loopback, the image run "
        "with podman; the backend polls every 0.1 s, the harness every 0.3 s), not on AWS, "
        "where instance provisioning adds minutes.", "",
        "| image | size MB |", "|---|---:|",
        *[f"| {name} | {size:.0f} |" for name, size in sizes.items()], "",
        "| backend | median wall s per stage |", "|---|---:|",
        *[f"| {name} | {seconds:.2f} |" for name, seconds in medians.items()], "",
        f"Container start overhead per stage: {medians['container'] - medians['local']:.2f} s; "
        f"SageMaker harness: {medians['sagemaker'] - medians['local']:.2f} s over local, "
        f"{medians['sagemaker'] - medians['container']:.2f} s over container.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(HERE / "results.md", "a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
