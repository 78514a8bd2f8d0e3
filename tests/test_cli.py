"""The CLI as people and CI scripts use it: true states, exit codes, JSON, submit/wait/cancel.

Every test runs the real `batchline` command in a subprocess on a small demo
file, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BATCHLINE, ROOT, RUNAWAY_FEATURES, SPEC, eventually, run_cli

from batchline.demo_data import generate
from batchline.manifest import RunManifest
from batchline.report import RunReport, json_schema

SCHEMA_FILE = ROOT / "docs" / "run-report.schema.json"
RUNAWAY = f"stages.features.params.sql={RUNAWAY_FEATURES['sql']}"  # runs until stopped
FIXED_SQL = yaml.safe_load(SPEC.read_text())["stages"]["features"]["params"]["sql"]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate(3_000, out, seed=5)
    return out / "encounters.csv"


def _run(root: Path, source: Path | str, *extra: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("run", str(SPEC), "--storage", str(root),
                   "--set", f"stages.ingest.params.source={source}", *extra, env=env)


def _only_run(root: Path) -> str:
    (run_id,) = os.listdir(root / "runs")
    return run_id


def test_a_missing_source_fails_the_run_rather_than_leaving_it_running(tmp_path: Path) -> None:
    result = _run(tmp_path, tmp_path / "absent.csv", "--run-id", "r1")
    assert result.returncode == 2, result.stderr
    assert "absent.csv" in result.stderr and "Traceback" not in result.stderr
    listed = run_cli("runs", "--storage", str(tmp_path))
    assert listed.returncode == 0
    assert "r1\treadmission\tfailed\t" in listed.stdout, listed.stdout
    status = run_cli("status", "r1", "--storage", str(tmp_path))
    assert status.returncode == 2, status.stdout
    assert "run: " in status.stdout and "absent.csv" in status.stdout


def test_a_bad_sql_is_fixed_by_resume_set_and_explain_shows_the_change(
        tmp_path: Path, small_csv: Path) -> None:
    bad = _run(tmp_path, small_csv, "--run-id", "sql", "--set",
               "stages.features.params.sql=SELECT nonsense FROM encounters")
    assert bad.returncode == 2, bad.stderr
    assert "1 succeeded, 1 failed, 2 pending" in bad.stdout, bad.stdout
    assert "resume sql --set" not in bad.stderr  # the advice names the option, not a guess
    assert "batchline resume RUN --set FIELD=VALUE" in bad.stderr
    status = run_cli("status", "sql", "--storage", str(tmp_path))
    assert status.returncode == 2
    assert "last log lines of features:" in status.stdout and "nonsense" in status.stdout

    fixed = run_cli("resume", "sql", "--storage", str(tmp_path),
                    "--set", f"stages.features.params.sql={FIXED_SQL}")
    assert fixed.returncode == 0, fixed.stderr
    assert ": 3 succeeded, 1 reused;" in fixed.stdout  # ingest was not run again
    explained = run_cli("explain", "sql", "--storage", str(tmp_path))
    assert explained.stdout.startswith("changed by resume --set: stages.features.params.sql=")
    assert "ingest: reused (outputs committed by this run" in explained.stdout
    manifest = RunManifest.load(str(tmp_path), "sql")
    # --set values are YAML scalars: the query's line breaks fold into spaces.
    assert manifest.spec["stages"]["features"]["params"]["sql"] == " ".join(FIXED_SQL.split())


def test_every_unknown_name_and_bad_option_exits_2_with_a_hint(
        tmp_path: Path, small_csv: Path) -> None:
    assert _run(tmp_path, small_csv, "--run-id", "ok", "--stages", "ingest").returncode == 0
    cases = {
        ("logs", "ok", "trian"): "did you mean 'train'?",
        ("logs", "ok", "ingest", "--attempt", "5"): "has no attempt 5; its attempts: 1",
        ("logs", "ok", "train"): "has no attempts",
        ("status", "nope"): "no run 'nope'",
        ("render", str(SPEC), "--backend", "local"): "have something to render",
        ("run", str(SPEC), "--stages", "scor"): "did you mean 'score'?",
        ("run", str(SPEC), "--backend", "kubernetse"): "unknown backend 'kubernetse'",
    }
    for args, words in cases.items():
        result = run_cli(*args, "--storage", str(tmp_path))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_json_report_follows_the_documented_schema(tmp_path: Path, small_csv: Path) -> None:
    result = _run(tmp_path, small_csv, "--run-id", "js", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # the whole of stdout is one document
    RunReport.model_validate(report)
    assert report["schema"] == "batchline.run/1" and report["state"] == "succeeded"
    assert report["exit_code"] == 0
    assert report["stages"]["train"]["metrics"]["auc_valid"] > 0.5
    assert report["stages"]["score"]["outputs"]["predictions"].endswith("/score/predictions")
    assert set(json_schema()["required"]) <= set(report)
    # The checked-in schema is the one the code produces.
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()

    failed = _run(tmp_path, small_csv, "--run-id", "js2", "--json", "--set",
                  "stages.train.params.label=no_such_column")
    assert failed.returncode == 2
    doc = json.loads(failed.stdout)
    assert doc["state"] == "failed" and doc["exit_code"] == 2
    assert doc["stages"]["train"]["cause"] == "bad_input"


def test_submit_returns_at_once_and_wait_and_cancel_follow_the_run(
        tmp_path: Path, small_csv: Path) -> None:
    submitted = run_cli("submit", str(SPEC), "--storage", str(tmp_path),
                        "--set", f"stages.ingest.params.source={small_csv}")
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert run_cli("status", run_id, "--storage", str(tmp_path)).returncode == 0
    done = run_cli("wait", run_id, "--storage", str(tmp_path), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["state"] == "succeeded"
    assert (tmp_path / "runs" / run_id / "launcher.log").exists()

    # A run whose features never end: wait times out (124), cancel stops it (130).
    slow = run_cli("submit", str(SPEC), "--storage", str(tmp_path), "--run-id", "slow",
                   "--set", f"stages.ingest.params.source={small_csv}", "--set", RUNAWAY)
    assert slow.returncode == 0, slow.stderr
    eventually(lambda: RunManifest.load(str(tmp_path), "slow").stages["features"].state ==
               "running", timeout=120, what="features to start")
    timed_out = run_cli("wait", "slow", "--storage", str(tmp_path), "--timeout", "1")
    assert timed_out.returncode == 124 and "still running" in timed_out.stderr
    cancelled = run_cli("cancel", "slow", "--storage", str(tmp_path))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "features: cancelled" in cancelled.stdout
    assert run_cli("wait", "slow", "--storage", str(tmp_path)).returncode == 130
    manifest = RunManifest.load(str(tmp_path), "slow")
    attempt = manifest.stages["features"].attempts[-1]
    assert attempt.cause == "cancelled" and attempt.ended_at is not None
    again = run_cli("cancel", "slow", "--storage", str(tmp_path))
    assert again.returncode == 2 and "already ended (cancelled)" in again.stderr
    # Cancelled is not final: resume, with a query that ends, finishes it.
    resumed = run_cli("resume", "slow", "--storage", str(tmp_path),
                      "--set", f"stages.features.params.sql={FIXED_SQL}")
    assert resumed.returncode == 0, resumed.stderr


def test_a_launcher_killed_without_a_word_shows_stale_and_resume_takes_over(
        tmp_path: Path, small_csv: Path) -> None:
    env = {**os.environ, "BATCHLINE_HEARTBEAT_SECONDS": "0.5"}
    launcher = subprocess.Popen(
        [*BATCHLINE, "run", str(SPEC), "--storage", str(tmp_path), "--run-id", "st",
         "--set", f"stages.ingest.params.source={small_csv}"], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eventually(lambda: (tmp_path / "runs/st/manifest.json").exists() and
               RunManifest.load(str(tmp_path), "st").state == "running",
               timeout=120, what="the run to start")
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    short = {"BATCHLINE_HEARTBEAT_SECONDS": "0.5"}
    eventually(lambda: "\tstale\t" in run_cli("runs", "--storage", str(tmp_path),
                                               env=short).stdout, timeout=30, what="stale")
    status = run_cli("status", "st", "--storage", str(tmp_path), env=short)
    assert status.returncode == 3 and "(stale)" in status.stdout
    resumed = run_cli("resume", "st", "--storage", str(tmp_path), env=short)
    assert resumed.returncode == 0, resumed.stderr


def test_sigterm_cancels_a_run_in_the_foreground(tmp_path: Path, small_csv: Path) -> None:
    launcher = subprocess.Popen(
        [*BATCHLINE, "run", str(SPEC), "--storage", str(tmp_path), "--run-id", "term",
         "--set", f"stages.ingest.params.source={small_csv}", "--set", RUNAWAY], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eventually(lambda: (tmp_path / "runs/term/manifest.json").exists() and
               RunManifest.load(str(tmp_path), "term").stages["features"].state == "running",
               timeout=120, what="features to start")
    launcher.send_signal(signal.SIGTERM)
    _out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    manifest = RunManifest.load(str(tmp_path), "term")
    assert manifest.state == "cancelled" and manifest.stages["features"].state == "cancelled"
    # and the runaway stage is gone, not orphaned (a SIGTERM that lands while the stage
    # is being started is held until its handle exists; see batchline.interrupts)
    assert _processes_mentioning(str(tmp_path)) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.name.isdigit() and text in cmdline:
            found.append(cmdline)
    return found


def test_without_a_terminal_lines_are_never_wrapped_and_long_stages_beat(
        tmp_path: Path, small_csv: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "storage"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(BATCHLINE_PROGRESS_SECONDS="0.5")
    result = subprocess.run(
        [*BATCHLINE, "run", str(SPEC), "--storage", str(deep), "--run-id", "plain",
         "--set", f"stages.ingest.params.source={small_csv}"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert f"manifest {deep}/runs/plain/manifest.json" in result.stdout  # one line, whole
    assert "still running after" in result.stderr  # each stage takes over 0.5 s
    assert "running running" not in result.stderr and "reused reused" not in result.stderr
    for line in result.stderr.splitlines():
        assert line[:8].count(":") == 2, line  # every progress line starts with a time


def test_help_and_version_import_nothing_heavy() -> None:
    # The command ends without the interpreter's teardown; atexit handlers still run.
    probe = ("import atexit, sys, runpy; sys.argv = ['batchline', '--help']\n"
             "atexit.register(lambda: print('HEAVY', [m for m in ('pyarrow', 'pydantic', "
             "'duckdb', 'lightgbm', 'rich') if m in sys.modules]))\n"
             "runpy.run_module('batchline', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=False, cwd=ROOT)
    assert "Usage:" in result.stdout and "HEAVY []" in result.stdout, result.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("batchline 0.")


def test_every_option_of_every_command_says_what_it_does() -> None:
    import typer.main

    from batchline.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    missing = [f"{name} {param.name}" for name, command in commands.items()
               for param in command.params
               if not getattr(param, "help", None) and param.name != "help"]
    assert missing == []


def test_demo_data_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    too_few = run_cli("demo-data", "--rows", "100", "--out", str(tmp_path / "d"))
    assert too_few.returncode == 2 and "Traceback" not in too_few.stderr
    remote = run_cli("demo-data", "--rows", "500", "--out", "s3://bucket/demo")
    assert remote.returncode == 2 and "local folder" in remote.stderr
    assert not (ROOT / "s3:").exists()


def test_a_cancel_before_the_launcher_starts_still_stands(tmp_path: Path,
                                                          small_csv: Path) -> None:
    """The request is in storage before any launcher runs: the first one honours it."""
    from batchline.spec import load_spec

    plan_id = "early"
    # What `submit` writes before it starts the launcher: the pending manifest.
    loaded = load_spec(SPEC, {"stages.ingest.params.source": str(small_csv)})
    RunManifest.new(str(tmp_path), plan_id, loaded.name, "local",
                    loaded.model_dump(mode="json"), list(loaded.pipeline.order)).save()
    (tmp_path / "runs" / plan_id / "cancel-request.json").write_text("{}")
    started = run_cli("resume", plan_id, "--storage", str(tmp_path))
    assert started.returncode == 130, started.stderr
    manifest = RunManifest.load(str(tmp_path), plan_id)
    assert manifest.state == "cancelled" and "before its launcher started" in manifest.reason
    assert all(not entry.attempts for entry in manifest.stages.values())
