"""The CI examples in docs/ci/ run as written: their scripts, with the repo's CLI.

Steps that need the CI platform itself (checkout, setup-python, cloud
credentials, artifact upload, `pip install`) are left to the platform; every
`run:` / `script:` line that calls batchline or gates the model is run here
with bash, storage and source pointed at a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from batchline.demo_data import generate

DOCS = ROOT / "docs" / "ci"
PLATFORM_STEPS = {"install"}  # what the CI image does; this test's venv has it already


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ci-source")
    generate(3_000, out, seed=11)
    return out / "encounters.csv"


def _workspace(tmp_path: Path) -> Path:
    """A checkout as CI sees it: the repo's jobs/ and the working directory."""
    work = tmp_path / "checkout"
    work.mkdir(parents=True)
    (work / "jobs").symlink_to(ROOT / "jobs")
    return work


def _bash(script: str, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", "-e", "-c", script], cwd=work, capture_output=True,
                          text=True, timeout=600, check=False,
                          env={**os.environ, **env, "PATH": path})


def _github(tmp_path: Path, source: Path, min_auc: str) -> tuple[dict[str, str], list[str]]:
    """Run the workflow's steps as GitHub would: in order, stop at the first failure,
    then the `if: failure()` steps. Returns step outputs and the names of failed steps."""
    workflow = yaml.safe_load((DOCS / "github-actions.yml").read_text())
    (job,) = workflow["jobs"].values()
    work = _workspace(tmp_path)
    outputs_file = tmp_path / "github-output"
    outputs_file.touch()
    env = {**{k: str(v) for k, v in job["env"].items()}, "GITHUB_OUTPUT": str(outputs_file),
           "BATCHLINE_STORAGE": str(tmp_path / "store"), "SOURCE": str(source),
           "MIN_AUC": min_auc}
    failed: list[str] = []
    outputs: dict[str, str] = {}
    for step in job["steps"]:
        if "run" not in step or step.get("name") in PLATFORM_STEPS:
            continue
        condition = step.get("if", "")
        if bool(failed) != ("failure()" in condition):
            continue
        script = re.sub(r"\$\{\{ steps\.run\.outputs\.(\w+) \}\}",
                        lambda m: outputs.get(m.group(1), ""), step["run"])
        result = _bash(script, work, env)
        for line in outputs_file.read_text().splitlines():
            key, _, value = line.partition("=")
            outputs[key] = value
        if result.returncode != 0:
            failed.append(f"{step['name']} (exit {result.returncode}): {result.stderr[-500:]}")
    return outputs, failed


def test_the_github_workflow_builds_and_gates_the_model(tmp_path: Path, source: Path) -> None:
    outputs, failed = _github(tmp_path, source, min_auc="0.5")
    assert failed == []
    report = json.loads((tmp_path / "checkout" / "run.json").read_text())
    assert report["run_id"] == outputs["run_id"] and report["state"] == "succeeded"


def test_the_github_workflow_fails_at_the_gate_and_explains(tmp_path: Path,
                                                             source: Path) -> None:
    outputs, failed = _github(tmp_path, source, min_auc="0.99")
    assert len(failed) == 1 and failed[0].startswith("gate (exit 1)"), failed
    assert outputs["run_id"]


def _gitlab(tmp_path: Path, source: Path | str, min_auc: str) -> subprocess.CompletedProcess[str]:
    job = yaml.safe_load((DOCS / "gitlab-ci.yml").read_text())["build-model"]
    env = {**{k: str(v) for k, v in job["variables"].items()},
           "BATCHLINE_STORAGE": str(tmp_path / "store"), "SOURCE": str(source),
           "MIN_AUC": min_auc}
    return _bash("\n".join(job["script"]), _workspace(tmp_path), env)


def test_the_gitlab_job_passes_and_fails_with_the_runs_exit_code(tmp_path: Path,
                                                                  source: Path) -> None:
    passed = _gitlab(tmp_path / "ok", source, min_auc="0.5")
    assert passed.returncode == 0, passed.stderr
    assert "validation AUC" in passed.stdout
    missing = _gitlab(tmp_path / "bad", tmp_path / "absent.csv", min_auc="0.5")
    assert missing.returncode == 2, missing.stdout + missing.stderr  # bad input, not 1
    assert "absent.csv" in missing.stdout  # `batchline status` said why
