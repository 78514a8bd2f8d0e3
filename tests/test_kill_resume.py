"""SIGKILLs at random moments, each followed by a resume: the run always ends
byte-identical to a clean one, and nothing committed is ever missing a file.

The launcher and its stage are killed together (`killpg`, like a lost node),
at a moment drawn uniformly over a clean run's duration; the next `resume`
may itself be killed. The suite lands 20 kills on local storage and 20 on
moto's S3 (about 2.5 minutes each in CI); `make kill-resume` runs the same
tests with 50 each (BATCHLINE_TEST_KILLS), as the suite did before it grew.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import BATCHLINE, ROOT, SPEC, fingerprints, run_cli

from batchline import storage
from batchline.demo_data import generate
from batchline.errors import StorageError
from batchline.manifest import RunManifest

pytestmark = pytest.mark.slow
KILLS_PER_STORAGE = int(os.environ.get("BATCHLINE_TEST_KILLS", "20"))
KILLS_PER_CHAIN = 5
# Small and quick, so that many kills fit in the slow suite: the kill moments
# matter, not the data's size (test_pipeline_local kills a 300k-row write).
FAST = ["--set", "stages.train.params.num_boost_round=20", "--set",
        "stages.train.params.early_stopping_rounds=5"]


def _command(root: str, source: Path, run_id: str, first: bool) -> list[str]:
    if first:
        return [*BATCHLINE, "run", str(SPEC), "--storage", root, "--run-id", run_id, *FAST,
                "--set", f"stages.ingest.params.source={source}"]
    return [*BATCHLINE, "resume", run_id, "--storage", root]


def _running_stage(root: str, run_id: str) -> str:
    try:
        manifest = RunManifest.load(root, run_id)
    except StorageError:
        return "(before the manifest)"
    running = [s for s, e in manifest.stages.items() if e.state == "running"]
    return running[0] if running else "(between stages)"


def _committed_are_intact(root: str, run_id: str) -> None:
    fs, base = storage.resolve(storage.join(root, "runs", run_id))
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.base_name == storage.SUCCESS:
            uri = (f"s3://{info.path}" if root.startswith("s3://") else info.path).rsplit(
                "/", 1)[0]
            record = storage.read_success(uri)
            assert record is not None, f"{uri}: unreadable success record"
            assert storage.verify(uri, record, checksums=True) == [], uri


def test_random_sigkills_always_resume_to_a_clean_result_on_a_local_folder(
        tmp_path: Path) -> None:
    kill_and_resume("local", tmp_path, str(tmp_path / "store"))


def kill_and_resume(where: str, tmp_path: Path, base: str) -> None:
    """SIGKILL runs at random moments, resume each, until KILLS_PER_STORAGE kills; every
    chain must end with the clean run's outputs. (S3: test_kill_resume_s3.py, a module
    of its own so that the test workers run the two at once.)"""
    generate(1_500, tmp_path / "src", seed=9)
    source = tmp_path / "src" / "encounters.csv"
    started = time.monotonic()
    clean = run_cli("run", str(SPEC), "--storage", f"{base}-clean", "--run-id", "k", *FAST,
                    "--set", f"stages.ingest.params.source={source}")
    assert clean.returncode == 0, clean.stderr
    duration = time.monotonic() - started
    expected = fingerprints(f"{base}-clean", "k")
    rng = random.Random(1234 if where == "local" else 4321)
    kills, where_killed, chains = 0, Counter[str](), 0
    while kills < KILLS_PER_STORAGE:
        chains += 1
        root = f"{base}-{chains}"
        first = True
        for _ in range(min(KILLS_PER_CHAIN, KILLS_PER_STORAGE - kills)):
            proc = subprocess.Popen(_command(root, source, "k", first), cwd=ROOT,
                                    start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=os.environ.copy())
            try:
                # The moment of the kill: anywhere in a clean run's duration
                # (after the interpreter has started: a kill before is no test).
                proc.wait(timeout=rng.uniform(0.5, duration))
            except subprocess.TimeoutExpired:
                where_killed[_running_stage(root, "k")] += 1
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
            else:
                assert proc.returncode == 0, f"exit {proc.returncode}"
                break  # it finished before its kill: this chain is done
            finally:
                if storage.exists(storage.join(root, "runs", "k", "manifest.json")):
                    first = False
            _committed_are_intact(root, "k")
        # Let the last resume finish undisturbed.
        done = run_cli(*_command(root, source, "k", first)[len(BATCHLINE):])
        assert done.returncode == 0, done.stderr
        assert fingerprints(root, "k") == expected, f"chain {chains}"
        manifest = RunManifest.load(root, "k")
        for entry in manifest.stages.values():
            numbers = [a.number for a in entry.attempts if a.shard is None]
            assert numbers == sorted(set(numbers)), "attempt numbers were reused"
            for uri in entry.outputs.values():
                prefixes = [n for n in storage.list_dir(uri) if n.startswith("data-")]
                assert len(prefixes) == 1, f"{uri} holds {prefixes}"
    print(f"\n{where}: {kills} kills over {chains} chains; killed during: "
          f"{dict(sorted(where_killed.items()))}")
    assert kills == KILLS_PER_STORAGE
