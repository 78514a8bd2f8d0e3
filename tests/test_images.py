"""The stage images, run for real with podman the way every backend runs them.

Each image runs as uid 10001 on a read-only root filesystem with only a tmpfs
on /tmp, imports what its stage needs, and carries nothing it does not need.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from batchline.stages import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.podman]

# What each pip extra brings that a stage image may import; an image carries
# what its stage's extras (from the catalog) bring, and none of the others'.
EXTRA_IMPORTS = {"ingest": "numpy", "features": "duckdb", "model": "lightgbm",
                 "search": "optuna"}
# The heavy ones no other extra brings (numpy comes with LightGBM too).
EXCLUSIVE = {"features": "duckdb", "model": "lightgbm", "search": "optuna"}
CLOUD = ("kubernetes", "boto3")
NEEDS = {name: ("batchline.stage", stage.module, "pyarrow.parquet", "pyarrow.fs",
                *(EXTRA_IMPORTS[e] for e in stage.extras)) for name, stage in STAGES.items()}
LACKS = {name: (*(m for e, m in EXCLUSIVE.items() if e not in stage.extras), *CLOUD)
         for name, stage in STAGES.items()}
NEEDS["launcher"] = ("batchline.cli", "batchline.launcher", *CLOUD, "typer")
LACKS["launcher"] = ("lightgbm", "duckdb")
# Runs inside the container: imports, then reports uid and whether / is writable.
PROBE = """
import importlib, importlib.util, json, os, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
try:
    open("/probe", "w")
    writable = True
except OSError:
    writable = False
with open(os.path.join(os.environ["TMPDIR"], "ok"), "w") as f:
    f.write("tmp is writable")
print(json.dumps({"uid": os.getuid(), "root_writable": writable, "home": os.environ["HOME"],
                  "present": [m for m in sys.argv[2].split(",")
                              if importlib.util.find_spec(m) is not None]}))
"""


def _probe(image: str, needs: tuple[str, ...], lacks: tuple[str, ...]) -> dict[str, object]:
    result = subprocess.run(
        ["podman", "run", "--rm", "--read-only", "--user", "10001:10001", "--tmpfs", "/tmp",
         "--cap-drop", "ALL", "--network", "none", "--entrypoint", "python", image,
         "-c", PROBE, ",".join(needs), ",".join(lacks)],
        capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"{image}: {result.stderr}"
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("name", list(NEEDS))
def test_image_runs_read_only_as_non_root_and_is_lean(name: str,
                                                      stage_images: dict[str, str]) -> None:
    report = _probe(stage_images[name], NEEDS[name], LACKS[name])
    assert report["uid"] == 10001
    assert report["root_writable"] is False
    assert report["home"] == "/tmp"
    assert report["present"] == [], f"{name} carries {report['present']} it never uses"


def _inspect(image: str) -> dict[str, object]:
    out = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True,
                         check=True).stdout
    config: dict[str, object] = json.loads(out)[0]["Config"]
    return config


@pytest.mark.parametrize("name", list(NEEDS))
def test_image_metadata_entrypoint_and_no_secrets(name: str,
                                                  stage_images: dict[str, str]) -> None:
    config = _inspect(stage_images[name])
    labels = config["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    # Only builder stages carry it: build-images.sh removes images by this label.
    assert "org.batchline.builder" not in labels
    assert config["User"] == "10001:10001"
    expected = ["batchline"] if name == "launcher" else ["python", "-m", "batchline.stage"]
    assert config["Entrypoint"] == expected
    env_vars = config.get("Env") or []
    assert isinstance(env_vars, list)
    env = " ".join(env_vars)
    assert "AWS_" not in env and "SECRET" not in env and "TOKEN" not in env


@pytest.mark.parametrize("name", list(NEEDS))
def test_image_keeps_no_wheelhouse(name: str, stage_images: dict[str, str]) -> None:
    result = subprocess.run(["podman", "run", "--rm", "--read-only", "--user", "10001:10001",
                             "--entrypoint", "python", stage_images[name], "-c",
                             "import glob, os; print(os.path.exists('/wheels'), "
                             "len(glob.glob('/opt/**/*.whl', recursive=True)))"],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0"]


def test_stage_entrypoint_takes_the_stage_name_first(stage_images: dict[str, str]) -> None:
    # No task: the entrypoint rejects the call as bad input (exit 2), not a crash.
    result = subprocess.run(["podman", "run", "--rm", "--read-only", "--user", "10001:10001",
                             "--tmpfs", "/tmp", stage_images["ingest"], "ingest", "--task",
                             "/tmp/absent.json"],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr


def test_builder_images_do_not_outlive_their_build(stage_images: dict[str, str]) -> None:
    # A builder image carries `batchline-<pid>-<time>` of the build-images.sh run
    # that made it; one whose process is gone was left behind.
    ids = subprocess.run(["podman", "images", "--all", "--quiet", "--filter",
                          "label=org.batchline.builder"], capture_output=True, text=True,
                         check=True).stdout.split()
    left = []
    for image in dict.fromkeys(ids):
        build_id = _inspect(image)["Labels"]["org.batchline.builder"]
        pid = int(build_id.split("-")[1]) if build_id.count("-") == 2 else 0
        if not pid or not os.path.exists(f"/proc/{pid}"):
            left.append(f"{image} ({build_id})")
    assert not left, f"builder images left behind: {left}"
