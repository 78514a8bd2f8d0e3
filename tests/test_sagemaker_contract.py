"""The stage entrypoint under SageMaker's container contract, in this process.

A temporary folder plays /opt/ml: the config files SageMaker writes go in,
the failure/message file and the model come out (the real images run under
this contract in tests/test_sagemaker_backend.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import ingest_task

from batchline import storage
from batchline.errors import SpecError
from batchline.sagemaker_contract import SageMakerJob, detect, shard_already_committed
from batchline.stage import main
from batchline.task import StageTask

COLUMNS = {"id": "int64", "name": "string"}


@pytest.fixture(autouse=True)
def _restore_this_process() -> Iterator[None]:
    """main() runs here as in a stage process: it writes the CPU policy into os.environ
    (OMP_NUM_THREADS, inherited by every later child: a stage run by the local backend
    in a later test would train with other threads), sizes Arrow's pool and handles
    SIGTERM. Undo all three for the tests that follow."""
    environ, handler, cpus = dict(os.environ), signal.getsignal(signal.SIGTERM), pa.cpu_count()
    yield
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGTERM, handler)
    pa.set_cpu_count(cpus)


def good_task(tmp_path: Path, **params: object) -> StageTask:
    source = tmp_path / "in.csv"
    source.write_text("id,name\n1,a\n2,b\n")
    return ingest_task(tmp_path / "store", {"source": str(source), "columns": COLUMNS,
                                            **params})


def training_job(root: Path, task_uri: str, hosts: list[str] | None = None,
                 current: str = "algo-1") -> SageMakerJob:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({"batchline_task": task_uri}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": hosts or [current], "network_interface_name":
         "eth0"}))
    return SageMakerJob("training", root)


def processing_job(root: Path, hosts: list[str] | None = None,
                   current: str = "algo-1") -> SageMakerJob:
    config = root / "config"
    config.mkdir(parents=True)
    (config / "processingjobconfig.json").write_text(json.dumps({"ProcessingJobName": "j"}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": hosts or [current]}))
    return SageMakerJob("processing", root)


def test_training_job_finds_its_task_in_hyperparameters(tmp_path: Path) -> None:
    task = good_task(tmp_path)
    opt_ml = tmp_path / "opt-ml"
    training_job(opt_ml, task.task_uri)
    assert detect(opt_ml) == SageMakerJob("training", opt_ml)
    # SageMaker passes one argument (`train`); here the stage is ingest's task.
    assert main(["ingest"], opt_ml=opt_ml) == 0
    assert storage.committed(task.outputs["encounters"]).rows == 2
    assert not (opt_ml / "output" / "failure").exists()


def test_failure_reason_goes_to_the_failure_file_with_its_exit_code(tmp_path: Path) -> None:
    task = good_task(tmp_path, columns={"id": "int64", "ward_id": "string"})
    opt_ml = tmp_path / "opt-ml"
    training_job(opt_ml, task.task_uri)
    assert main(["ingest"], opt_ml=opt_ml) == 2
    failure = (opt_ml / "output" / "failure").read_text()
    assert failure.startswith("exit code 2: ") and "ward_id" in failure
    assert len(failure) <= 1024


def test_processing_job_writes_its_exit_message(tmp_path: Path) -> None:
    task = good_task(tmp_path, columns={"id": "int64", "ward_id": "string"})
    opt_ml = tmp_path / "opt-ml"
    processing_job(opt_ml)
    assert main(["ingest", "--task", task.task_uri], opt_ml=opt_ml) == 2
    message = (opt_ml / "output" / "message").read_text()
    assert message.startswith("exit code 2: ") and "ward_id" in message
    assert not (opt_ml / "output" / "failure").exists()


def test_outside_sagemaker_the_task_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    assert main(["ingest"], opt_ml=tmp_path / "none") == 2
    assert "--task is required" in capsys.readouterr().err
    training_job(tmp_path / "no-task", "")
    assert main(["train"], opt_ml=tmp_path / "no-task") == 2
    assert "batchline_task" in (tmp_path / "no-task" / "output" / "failure").read_text()


def test_host_index_picks_the_shard(tmp_path: Path) -> None:
    hosts = ["algo-10", "algo-2", "algo-1"]
    job = processing_job(tmp_path / "a", hosts, current="algo-2")
    assert job.host_index() == 1
    assert processing_job(tmp_path / "b", hosts, current="algo-10").host_index() == 2
    with pytest.raises(SpecError, match="algo-9"):
        processing_job(tmp_path / "c", [*hosts[:1], "algo-3"], current="algo-9").host_index()


def test_sharded_task_runs_this_hosts_shard_and_skips_a_committed_one(tmp_path: Path) -> None:
    task = dataclasses.replace(good_task(tmp_path), shard_count=2)
    storage.write_text(task.task_uri, task.to_json())
    opt_ml = tmp_path / "opt-ml"
    processing_job(opt_ml, ["algo-1", "algo-2"], current="algo-2")
    assert not shard_already_committed(task.for_shard(1))
    assert main(["ingest", "--task", task.task_uri], opt_ml=opt_ml) == 0
    shard = task.for_shard(1)
    committed = storage.committed(shard.output_uri("encounters"))
    assert storage.read_success(task.for_shard(0).output_uri("encounters")) is None
    # The retry's job runs every host again: shard 1 is committed with this key.
    assert shard_already_committed(shard)
    assert not shard_already_committed(dataclasses.replace(shard, cache_key="other"))
    assert main(["ingest", "--task", task.task_uri], opt_ml=opt_ml) == 0
    assert storage.committed(shard.output_uri("encounters")).committed_at == \
        committed.committed_at


def test_the_model_is_kept_in_opt_ml_model(tmp_path: Path) -> None:
    root = tmp_path / "store"
    task = StageTask(run_id="r", stage="train", inputs={}, outputs={"model": str(root / "m")},
                     params={}, storage_root=str(root), task_uri="", cache_key="k")
    with task.writer("model") as out:
        out.write_file("model.txt", b"tree\n")
        out.commit({})
    job = SageMakerJob("training", tmp_path / "opt-ml")
    kept = job.keep_model(task)
    assert [p.name for p in kept] == ["model.txt"]
    assert (tmp_path / "opt-ml" / "model" / "model.txt").read_bytes() == b"tree\n"
    assert SageMakerJob("processing", tmp_path / "p").keep_model(task) == []
