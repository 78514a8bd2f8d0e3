"""Nothing reused unverified: damaged commits and metadata are found, named and rerun."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SPEC, run_cli
from test_launcher import InProcessBackend

from batchline import storage
from batchline.errors import StorageError
from batchline.launcher import Launcher
from batchline.manifest import RunManifest, list_runs
from batchline.spec import load_spec


def _spec(source: Path):  # type: ignore[no-untyped-def]
    return load_spec(SPEC, {"stages.ingest.params.source": str(source)})


@pytest.fixture
def first_run(demo_csv: Path, tmp_path: Path) -> tuple[Path, RunManifest]:
    root = tmp_path / "store"
    manifest = Launcher(_spec(demo_csv), str(root), InProcessBackend(), "r1").run()
    return root, manifest


def _files(manifest: RunManifest, stage: str, output: str) -> list[Path]:
    uri = manifest.stage(stage).outputs[output]
    return [Path(uri) / f.path for f in storage.committed(uri).files]


def _rerun(demo_csv: Path, root: Path, run_id: str, **options: object) -> list[str]:
    backend = InProcessBackend()
    Launcher(_spec(demo_csv), str(root), backend, run_id, **options).run()  # type: ignore[arg-type]
    return [t.stage for t in backend.submitted]


def test_a_deleted_part_file_is_found_and_the_stage_reruns(
        first_run: tuple[Path, RunManifest], demo_csv: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root, manifest = first_run
    part = _files(manifest, "features", "features")[0]
    part.unlink()
    assert _rerun(demo_csv, root, "r2") == ["features"]  # downstream keys are unchanged
    assert f"{part} is missing" in caplog.text


def test_an_altered_file_of_the_same_size_needs_verify(
        first_run: tuple[Path, RunManifest], demo_csv: Path) -> None:
    root, manifest = first_run
    part = _files(manifest, "features", "features")[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    assert _rerun(demo_csv, root, "r2") == []  # sizes match: a plain rerun cannot tell
    assert _rerun(demo_csv, root, "r3", verify=True) == ["features"]


def test_a_tampered_model_is_never_reused(first_run: tuple[Path, RunManifest],
                                         demo_csv: Path) -> None:
    root, manifest = first_run
    model = next(p for p in _files(manifest, "train", "model") if p.name == "model.txt")
    text = model.read_text()
    model.write_text(text.replace("learning_rate", "learning_ratf", 1))  # same size
    # Models are always checked by checksum before reuse, with or without --verify.
    # Score follows: the retrained model card names its own run.
    assert _rerun(demo_csv, root, "r2") == ["train", "score"]


def test_a_truncated_success_record_counts_as_not_committed(
        first_run: tuple[Path, RunManifest], demo_csv: Path) -> None:
    root, manifest = first_run
    record = Path(manifest.stage("score").outputs["predictions"]) / storage.SUCCESS
    record.write_text(record.read_text()[:40])
    assert storage.read_success(str(record.parent)) is None
    assert _rerun(demo_csv, root, "r1") == ["score"]  # resume of the same run reruns it


def test_force_reruns_on_purpose(first_run: tuple[Path, RunManifest], demo_csv: Path) -> None:
    root, _ = first_run
    assert _rerun(demo_csv, root, "r2", force=["train"]) == ["train", "score"]
    assert "forced with --force" in RunManifest.load(str(root), "r2").stage("train").reason


def test_a_corrupt_manifest_is_named_and_listed_as_unreadable(
        first_run: tuple[Path, RunManifest]) -> None:
    root, _ = first_run
    uri = root / "runs" / "r1" / "manifest.json"
    uri.write_text(uri.read_text()[:100])
    with pytest.raises(StorageError, match=r"manifest of run 'r1' .* is unreadable"):
        RunManifest.load(str(root), "r1")
    assert list_runs(str(root)) == ([], ["r1"])
    for command in (["status", "r1"], ["resume", "r1"]):
        result = run_cli(*command, "--storage", str(root))
        assert result.returncode == 2 and "is unreadable" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    listed = run_cli("runs", "--storage", str(root))
    assert listed.returncode == 0 and "unreadable" in listed.stdout


def test_resume_of_a_copied_root_writes_only_there(first_run: tuple[Path, RunManifest],
                                                   tmp_path: Path) -> None:
    root, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = (root / "runs" / "r1" / "manifest.json").read_bytes()
    result = run_cli("resume", "r1", "--storage", str(copy))
    assert result.returncode == 0, result.stderr
    assert (root / "runs" / "r1" / "manifest.json").read_bytes() == before
    assert RunManifest.load(str(copy), "r1").updated_at > RunManifest.load(
        str(root), "r1").updated_at


@pytest.mark.parametrize("args", [
    ["--storage", "s3://"], ["--run-id", ""], ["--run-id", "run\n"],
    ["--set", "stages.train.params.label=[unclosed"], ["--set", "x=!!python/object:os.system"]])
def test_names_and_paths_from_outside_exit_2(args: list[str], tmp_path: Path) -> None:
    result = run_cli("run", str(SPEC), *(["--storage", str(tmp_path / "s")]
                                          if "--storage" not in args else []), *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists() and not Path("s3:").exists()


def test_logs_of_an_unknown_stage_exit_2(first_run: tuple[Path, RunManifest]) -> None:
    root, _ = first_run
    result = run_cli("logs", "r1", "../../etc", "--storage", str(root))
    assert result.returncode == 2 and "has no stage '../../etc'" in result.stderr
    assert run_cli("logs", "r1", "train", "--storage", str(root)).stdout.startswith(
        "in-process r1-train")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs; CI runs as root) for full and read-only disks."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _no_stray_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "a temporary file was left"


def test_a_full_disk_fails_clearly_and_leaves_no_temp_files(small_disk: Path,
                                                           demo_csv: Path) -> None:
    (small_disk / "filler").write_bytes(b"\0" * (2 * 2**20 - 96 * 2**10))  # ~96 KiB left
    root = small_disk / "store"
    result = run_cli("run", str(SPEC), "--storage", str(root), "--run-id", "full",
                     "--set", f"stages.ingest.params.source={demo_csv}")
    assert result.returncode == 3, result.stderr
    assert "the disk is full" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    _no_stray_files(small_disk)
    (small_disk / "filler").unlink()  # space again: the run resumes to the end
    resumed = run_cli("resume", "full", "--storage", str(root))
    assert resumed.returncode == 0, resumed.stderr


def test_a_read_only_disk_fails_clearly(small_disk: Path, demo_csv: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run_cli("run", str(SPEC), "--storage", str(small_disk / "store"),
                     "--set", f"stages.ingest.params.source={demo_csv}")
    assert result.returncode == 3, result.stderr  # storage failed: not the spec's fault
    assert "the file system is read-only" in result.stderr and "Traceback" not in result.stderr


def test_storage_pointing_at_a_file_is_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    result = run_cli("run", str(SPEC), "--storage", str(target))
    assert result.returncode == 2 and "is a file" in result.stderr, result.stderr


def test_a_manifest_written_by_batchline_0_1_still_reads(tmp_path: Path) -> None:
    # tests/data/manifest-v1.json: a real manifest of the schema before
    # `schema_version` (attempts as dicts with `attempt` and `log`).
    run = tmp_path / "runs" / "s1"
    run.mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "manifest-v1.json", run / "manifest.json")
    manifest = RunManifest.load(str(tmp_path), "s1")
    assert manifest.schema_version == 2 and manifest.state == "succeeded"
    attempt = manifest.stage("train").attempts[0]
    assert (attempt.number, attempt.cause) == (1, "succeeded")
    assert attempt.logs == ["/tmp/smoke/oldstore/runs/s1/train/logs/attempt-1.log"]
    assert manifest.root == str(tmp_path)  # saved where it was read, not where it says
    status = run_cli("status", "s1", "--storage", str(tmp_path))
    assert status.returncode == 0 and "succeeded" in status.stdout, status.stderr
