"""Launcher policy (retries by cause, cache keys, resume) with an in-process backend.

The backend here is a fake of the Backend protocol, not a mock: it really runs
each stage in this process through the same entrypoint code, and fails on
command with a chosen cause, the way a platform would report it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SPEC

from batchline import stage as entrypoint
from batchline.backends.base import Backend, Handle, Outcome, Phase
from batchline.errors import SpecError, StageFailed
from batchline.launcher import Launcher
from batchline.manifest import RunManifest
from batchline.spec import load_spec
from batchline.storage import read_text
from batchline.task import Cause, StageTask


class InProcessBackend(Backend[Handle]):
    """Runs each stage in this process through the entrypoint's code, on the template.

    `failures` plans causes per stage (a platform's word, as an Outcome), and
    `exits` plans exit codes, both consumed one attempt at a time.
    """

    name = "local"

    def __init__(self, failures: dict[str, list[Cause]] | None = None,
                 exits: dict[str, list[int]] | None = None) -> None:
        self.failures = failures or {}
        self.exits = exits or {}
        self.submitted: list[StageTask] = []

    def start(self, task: StageTask) -> Handle:
        self.submitted.append(task)
        return Handle(task, f"inproc-{len(self.submitted)}")

    def poll(self, handle: Handle, timeout: float) -> Outcome | Phase:
        task = handle.task
        assert read_text(task.task_uri) == task.to_json()  # the launcher wrote the task first
        planned = self.failures.get(task.stage, [])
        if planned:
            cause = planned.pop(0)
            return Outcome(1, cause=cause, message=f"injected {cause.value}")
        codes = self.exits.get(task.stage, [])
        if codes:
            return Outcome(codes.pop(0))
        entrypoint.run_task(task)
        return Outcome(0)

    def fetch_logs(self, handle: Handle) -> dict[int | None, str]:
        return {handle.task.shard: f"in-process {handle.task.name}\n"}

    def stop(self, handle: Handle) -> None:
        return None


def _spec(source: Path, **sets: object):  # type: ignore[no-untyped-def]
    return load_spec(SPEC, {"stages.ingest.params.source": str(source), **sets})


def test_needed_stages(demo_csv: Path) -> None:
    pipeline = _spec(demo_csv).pipeline
    assert pipeline.needed(["score"]) == ["ingest", "features", "train", "score"]
    assert pipeline.needed(["features"]) == ["ingest", "features"]


def test_retryable_failure_is_retried_then_succeeds(demo_csv: Path, tmp_path: Path) -> None:
    backend = InProcessBackend({"features": [Cause.USER_ERROR, Cause.EVICTED, Cause.EVICTED]})
    spec = _spec(demo_csv, **{"stages.features.retries": 1})
    manifest = Launcher(spec, str(tmp_path), backend, "r1").run()
    attempts = manifest.stage("features").attempts
    # One counted failure (within retries=1) and two evictions that do not count.
    assert [a.cause for a in attempts] == ["user_error", "evicted", "evicted", "succeeded"]
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert all(a.logs and a.started_at <= (a.ended_at or 0) for a in attempts)
    assert [t.attempt for t in backend.submitted if t.stage == "features"] == [1, 2, 3, 4]
    assert manifest.state == "succeeded"


@pytest.mark.parametrize("cause", [Cause.OUT_OF_MEMORY, Cause.BAD_INPUT, Cause.IMAGE_PULL])
def test_non_retryable_causes_fail_at_once(demo_csv: Path, tmp_path: Path, cause: Cause) -> None:
    backend = InProcessBackend({"train": [cause]})
    with pytest.raises(StageFailed) as err:
        Launcher(_spec(demo_csv), str(tmp_path), backend, "r1").run()
    assert err.value.cause is cause
    manifest = RunManifest.load(str(tmp_path), "r1")
    assert manifest.state == "failed"
    assert manifest.stage("train").state == "failed"
    if cause is Cause.OUT_OF_MEMORY:
        assert "stages.train.resources.memory" in manifest.stage("train").reason
    assert manifest.stage("score").state == "pending"


def test_retries_exhausted(demo_csv: Path, tmp_path: Path) -> None:
    backend = InProcessBackend({"ingest": [Cause.USER_ERROR] * 3})
    with pytest.raises(StageFailed, match="ingest"):
        Launcher(_spec(demo_csv, **{"stages.ingest.retries": 2}), str(tmp_path), backend,
                 "r1").run()
    assert len(RunManifest.load(str(tmp_path), "r1").stage("ingest").attempts) == 3


def test_resume_skips_committed_stages(demo_csv: Path, tmp_path: Path) -> None:
    failing = InProcessBackend({"train": [Cause.OUT_OF_MEMORY]})
    with pytest.raises(StageFailed):
        Launcher(_spec(demo_csv), str(tmp_path), failing, "r1").run()
    again = InProcessBackend()
    manifest = Launcher(_spec(demo_csv), str(tmp_path), again, "r1").run()
    assert [t.stage for t in again.submitted] == ["train", "score"]
    assert [t.attempt for t in again.submitted] == [2, 1]  # attempts continue, logs don't clash
    assert manifest.stage("ingest").state == "reused"


def test_source_change_invalidates_everything(demo_csv: Path, tmp_path: Path) -> None:
    backend = InProcessBackend()
    Launcher(_spec(demo_csv), str(tmp_path), backend, "r1").run()
    with open(demo_csv, "a") as handle:
        handle.write("999999,1,H001,2024-01-01,2024-01-02,70,F,copd,12,1,139,medicare,0,1\n")
    backend = InProcessBackend()
    manifest = Launcher(_spec(demo_csv), str(tmp_path), backend, "r2").run()
    assert [t.stage for t in backend.submitted] == ["ingest", "features", "train", "score"]
    assert "input source changed" in manifest.stage("ingest").reason


def test_unselected_stage_without_outputs_is_an_error(demo_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="'ingest' is not in --stages"):
        Launcher(_spec(demo_csv), str(tmp_path), InProcessBackend(), "r1", ["score"]).run()


def test_bad_run_id_and_stage(tmp_path: Path, demo_csv: Path) -> None:
    with pytest.raises(SpecError, match="invalid run id"):
        Launcher(_spec(demo_csv), str(tmp_path), InProcessBackend(), "../etc")
    with pytest.raises(SpecError, match="unknown stages"):
        Launcher(_spec(demo_csv), str(tmp_path), InProcessBackend(), "r1", ["deploy"])
    with pytest.raises(SpecError, match=r"--force: unknown stages \['scor'\]; did you mean "
                       "'score'\\?"):
        Launcher(_spec(demo_csv), str(tmp_path), InProcessBackend(), "r1", force=["scor"])
    for bad in ("", "run\n", "Run", "a" * 33):
        with pytest.raises(SpecError, match="invalid run id"):
            Launcher(_spec(demo_csv), str(tmp_path), InProcessBackend(), bad)


def test_cause_parse_lists_known_values() -> None:
    with pytest.raises(ValueError, match="known causes: succeeded, bad_input"):
        Cause.parse("exploded")


@pytest.mark.parametrize(("code", "oom_killed", "cause"), [
    (0, None, Cause.SUCCEEDED), (2, None, Cause.BAD_INPUT), (1, None, Cause.USER_ERROR),
    (137, None, Cause.OUT_OF_MEMORY), (-9, None, Cause.OUT_OF_MEMORY),
    (137, False, Cause.USER_ERROR), (1, True, Cause.OUT_OF_MEMORY),
    (143, None, Cause.USER_ERROR), (None, None, Cause.USER_ERROR)])
def test_one_exit_code_table(code: int | None, oom_killed: bool | None, cause: Cause) -> None:
    assert Cause.from_exit(code, oom_killed) is cause


def test_exit_codes_drive_retries_the_same_way(demo_csv: Path, tmp_path: Path) -> None:
    backend = InProcessBackend(exits={"features": [1], "train": [137]})
    with pytest.raises(StageFailed) as err:
        Launcher(_spec(demo_csv), str(tmp_path), backend, "r1").run()
    assert err.value.cause is Cause.OUT_OF_MEMORY  # 137: never retried
    manifest = RunManifest.load(str(tmp_path), "r1")
    assert [a.cause for a in manifest.stage("features").attempts] == ["user_error", "succeeded"]
    assert [a.exit_code for a in manifest.stage("train").attempts] == [137]
