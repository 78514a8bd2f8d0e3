"""Every command in README.md runs as written, or is listed here with why it is not.

Commands are the README's indented and fenced lines starting with a tool name
(continuations joined). They run in README order from a folder holding a copy
of jobs/, against moto for s3:// URIs, with a few placeholders filled in
(SUBSTITUTIONS). A Kubernetes `run` is run as `render` with the same options
(there is no cluster); a pipe into kubectl runs only its left side.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from batchline import storage

README = ROOT / "README.md"
TOOLS = ("batchline", "make", "kubectl", "podman", "pip", "aws", "jq", "for")
ASSIGNMENT = re.compile(r"^[A-Za-z_]+=\S")  # `VAR=value command` or `var=$(command)`
NOT_RUN = {
    "make demo": "measured by hand on a fresh clone (a new .venv: minutes); its two "
                 "commands are the README's first `demo-data` and `run`",
    "make test": "is the whole test suite, this test included",
    "make base-image": "debootstrap and podman; `make test` runs it before the suite",
    "make images": "podman builds; `make test` runs it before the suite",
    "IMAGE_REGISTRY=": "`make images` for ECR; `make test` runs `make images`",
    "kubectl apply -k k8s/overlays/dev": "needs a cluster; test_kubernetes_manifests builds "
                                         "every overlay with `kubectl kustomize`",
    "podman run": "needs the built images; test_images runs them this way",
    "aws ": "needs an AWS account (ECR login, IAM roles)",
    "for s in": "pushes images to ECR: needs an AWS account",
    "batchline listen": "runs until SIGTERM; test_listener runs it against moto's SQS",
}
# Placeholders a reader fills in, and sizes made small for the test.
SUBSTITUTIONS = {"--rows 1000000": "--rows 6000", " SPEC ": " jobs/readmission.yaml ",
                 " --set ...)": ")", "s3://BUCKET/": "s3://bucket/", "$ACCOUNT": "123456789012",
                 "$REGION": "us-east-1"}


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's code blocks, continuations joined."""
    commands: list[str] = []
    in_fence = False
    pending = ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not (in_fence or line.startswith("    ")):
            continue
        code = line.strip()
        if pending:
            pending += " " + code.rstrip("\\").strip()
            if not code.endswith("\\"):
                commands.append(pending)
                pending = ""
            continue
        if code.split(" ", 1)[0] in TOOLS or ASSIGNMENT.match(code):
            if code.endswith("\\"):
                pending = code.rstrip("\\").strip()
            else:
                commands.append(code)
    return [_without_comment(c) for c in commands]


def _without_comment(command: str) -> str:
    return re.sub(r"\s+#\s.*$", "", command)


def _not_run(command: str) -> bool:
    return any(command.startswith(prefix) for prefix in NOT_RUN)


def test_every_not_run_entry_names_a_readme_command() -> None:
    commands = readme_commands(README.read_text())
    for prefix in NOT_RUN:
        assert any(c.startswith(prefix) for c in commands), f"{prefix!r} is not in the README"


def test_the_install_extras_the_readme_names_exist() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = re.findall(r"pip install '?batchline\[([a-z,]+)\]", README.read_text())
    assert named
    for group in named:
        assert set(group.split(",")) <= set(extras), group
        # The CLI is what a reader runs next: the extras must bring typer and rich.
        assert "cli" in group.split(",") or "all" in group.split(",")


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path, s3_bucket: str) -> None:
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    bucket = s3_bucket.removeprefix("s3://")
    ran: list[str] = []
    variables: dict[str, str] = {}
    for command in readme_commands(README.read_text()):
        if _not_run(command):
            continue
        line = command.split(" | ")[0]  # `... | kubectl apply -f -`: no cluster
        for old, new in SUBSTITUTIONS.items():
            line = line.replace(old, new)
        line = line.replace("s3://bucket/", f"s3://{bucket}/")
        for name, value in variables.items():
            line = line.replace(f'"${name}"', value)
        if "RUN" in line.split():
            line = line.replace(" RUN", f" {_latest_run(tmp_path)}")
        if "landing/encounters.csv" in line:
            _upload_source(tmp_path, f"s3://{bucket}/landing/encounters.csv")
        if line.startswith("jq "):  # reads what a `render ... > run.json` above wrote
            result = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=60, check=False)
            assert result.returncode == 0, f"{command}\n{result}"
            written = [tmp_path / part.split(" > ")[1].strip() for part in line.split(";")
                       if " > " in part]
            assert all(p.read_text().strip() not in ("", "null") for p in written)
            assert written or result.stdout.strip() not in ("", "null"), command
            ran.append(command)
            continue
        capture, _, line = line.rpartition("=$(") if "=$(" in line else ("", "", line)
        line = line.removesuffix(")")
        line, _, redirect = line.partition(" > ")
        if re.search(r"--backend (kubernetes|sagemaker)", line):  # no cluster, no AWS
            line = line.replace("batchline run ", "batchline render ", 1)
        args = shlex.split(line)
        assert args[0] == "batchline", f"no way to run {command!r}: add it to NOT_RUN"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "batchline.cli", *args[1:]],
                                cwd=tmp_path, capture_output=True, text=True, timeout=600,
                                check=False)
        print(f"{time.monotonic() - started:5.1f} s  {line}")  # where this test's time goes
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        if capture:
            variables[capture] = result.stdout.strip()
        if redirect:
            (tmp_path / redirect.strip()).write_text(result.stdout)
        if line.startswith("batchline render") and "sagemaker" not in line:
            jobs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
            assert {doc["kind"] for doc in jobs} == {"Job"}, result.stdout[:500]
        ran.append(command)
    assert any("--force score" in c for c in ran) and any("s3://" in c for c in ran)
    assert any(c.startswith("jq ") for c in ran) and any(" submit " in c for c in ran)


def _latest_run(folder: Path) -> str:
    runs = sorted((folder / "batchline-data" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return runs[-1].name


def _upload_source(folder: Path, uri: str) -> None:
    csv = folder / "demo-data" / "encounters.csv"
    if not storage.exists(uri):
        storage.write_bytes(uri, csv.read_bytes())
