"""The CPU budget: cgroup v1/v2 quotas read from real (fake-root) files, affinity, spec cpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchline import cpu
from batchline.errors import SpecError


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def _write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, value in json.loads(text).items():
        (path / name).write_text(value + "\n")


def test_v2_quota_at_the_container_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root, '{"cpu.max": "150000 100000"}')
    assert cpu.cgroup_quota(root, _proc_cgroup(tmp_path, "0::/\n")) == 1.5


def test_v2_no_limit_is_none(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root, '{"cpu.max": "max 100000"}')
    assert cpu.cgroup_quota(root, _proc_cgroup(tmp_path, "0::/\n")) is None


def test_v2_tightest_quota_along_the_path_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "kubepods", '{"cpu.max": "50000 100000"}')
    _write(root / "kubepods" / "pod1", '{"cpu.max": "max 100000"}')
    proc = _proc_cgroup(tmp_path, "0::/kubepods/pod1\n")
    assert cpu.cgroup_quota(root, proc) == 0.5


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_v1_quota(tmp_path: Path, mount: str) -> None:
    root = tmp_path / "cgroup"
    _write(root / mount / "docker" / "abc",
           '{"cpu.cfs_quota_us": "200000", "cpu.cfs_period_us": "100000"}')
    _write(root / mount, '{"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"}')
    proc = _proc_cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
                        "0::/\n")
    assert cpu.cgroup_quota(root, proc) == 2.0


def test_v1_unlimited_and_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu", '{"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"}')
    assert cpu.cgroup_quota(root, _proc_cgroup(tmp_path, "3:cpu:/\n")) is None
    assert cpu.cgroup_quota(tmp_path / "nothing", tmp_path / "no-such-file") is None


def test_budget_is_the_minimum_floored_and_at_least_one(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root, '{"cpu.max": "150000 100000"}')
    proc = _proc_cgroup(tmp_path, "0::/\n")
    found = cpu.budget("4", root=root, self_cgroup=proc, cores=8)
    assert found.cores == 1  # 1.5 cores of quota: one thread
    assert "cgroup quota 1.5" in found.describe()
    assert cpu.budget("500m", root=root, self_cgroup=proc, cores=8).cores == 1
    free = tmp_path / "free"
    free.mkdir()
    assert cpu.budget("3", root=free, self_cgroup=proc, cores=8).cores == 3
    assert cpu.budget("2500m", root=free, self_cgroup=proc, cores=8).cores == 3  # rounded up
    assert cpu.budget("8", root=free, self_cgroup=proc, cores=2).cores == 2  # affinity
    assert cpu.budget(None, root=free, self_cgroup=proc, cores=2).cores == 2


def test_workers_divide_the_cpu_instead_of_multiplying_it(tmp_path: Path) -> None:
    free = tmp_path / "free"
    free.mkdir()
    proc = _proc_cgroup(tmp_path, "0::/\n")
    assert cpu.budget("8", workers=2, root=free, self_cgroup=proc, cores=8).cores == 4
    assert cpu.budget("8", workers=16, root=free, self_cgroup=proc, cores=8).cores == 1


def test_threads_never_exceed_the_budget() -> None:
    budget = cpu.CpuBudget(1, ("spec cpu 1",))
    assert budget.threads(2) == 1
    assert cpu.CpuBudget(4, ()).threads(2) == 2
    assert cpu.threads(8, {cpu.BUDGET_ENV: "3"}) == 3
    assert cpu.threads(2, {cpu.BUDGET_ENV: "3"}) == 2


def test_wait_policy_default_override_and_refusal() -> None:
    assert cpu.wait_policy({}) == "passive"
    assert cpu.wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}) == "active"
    assert cpu.wait_policy({cpu.WAIT_POLICY_ENV: "active", "OMP_WAIT_POLICY": "passive"}) \
        == "active"
    with pytest.raises(SpecError, match="passive, active"):
        cpu.wait_policy({cpu.WAIT_POLICY_ENV: "spin"})


def test_apply_sets_the_environment_for_openmp() -> None:
    import pyarrow as pa

    env: dict[str, str] = {cpu.WORKERS_ENV: "1"}
    before = pa.cpu_count()
    try:
        found, policy = cpu.apply("1", env)
        assert pa.cpu_count() == 1
    finally:
        pa.set_cpu_count(before)
    assert found.cores == 1 and policy == "passive"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env[cpu.BUDGET_ENV] == "1"
    with pytest.raises(SpecError, match=cpu.WORKERS_ENV):
        cpu.apply("1", {cpu.WORKERS_ENV: "0"})


def _train_task_with_one_cpu(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A train task (cpu 1, num_threads 4) whose input is missing, and a clean environment."""
    from batchline.task import Resources, StageTask

    task = StageTask(run_id="r1", stage="train", inputs={"features": str(tmp_path / "none")},
                     outputs={"model": str(tmp_path / "model")}, params={"label": "y",
                     "split": {"kind": "random"}, "num_threads": 4},
                     storage_root=str(tmp_path), task_uri=str(tmp_path / "task.json"),
                     cache_key="k", resources=Resources(cpu="1"))
    (tmp_path / "task.json").write_text(task.to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "BATCHLINE_"))}
    return task.task_uri, env


def test_stage_entrypoint_sets_the_policy_before_lightgbm_loads(tmp_path: Path) -> None:
    # A real stage process: the environment LightGBM's OpenMP sees, and the log line.
    uri, env = _train_task_with_one_cpu(tmp_path)
    done = subprocess.run([sys.executable, "-m", "batchline.stage", "train", "--task", uri],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "stage train: 1 threads (num_threads 4); CPU available 1" in done.stderr
    assert "OpenMP wait policy passive" in done.stderr
    assert "imported before the CPU policy" not in done.stderr


@pytest.mark.parametrize(("prepared_cpu", "warned"), [("1", False), ("2", True)])
def test_a_standby_prepared_for_train_loads_lightgbm_under_the_task_policy(
        tmp_path: Path, prepared_cpu: str, warned: bool) -> None:
    # A standby prepared for train with cpu 1 fixed that policy before it loaded
    # LightGBM, so the task (cpu 1) finds it right; one prepared with cpu 2 did not, and
    # the stage says so (the local backend never hands it such a task).
    from batchline import standby

    uri, env = _train_task_with_one_cpu(tmp_path)
    arguments = standby.Prepared("train", prepared_cpu).arguments()
    done = subprocess.run([sys.executable, "-m", "batchline.stage", standby.FLAG, *arguments],
                          input=standby.encode(["train", "--task", uri]),
                          env=env, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert "stage train: 1 threads (num_threads 4); CPU available 1" in err
    assert ("imported before the CPU policy" in err) is warned
    assert done.returncode != 0 and "none" in err  # then it failed on its missing input


def test_a_standby_command_line_is_checked() -> None:
    from batchline import standby

    assert standby.target_of([standby.FLAG]) is None
    assert standby.target_of([standby.FLAG, "--prepare", "score"]) == standby.Prepared("score")
    prepared = standby.Prepared("score", "500m")
    assert standby.target_of([standby.FLAG, *prepared.arguments()]) == prepared
    assert prepared.fits("score", "500m") and not prepared.fits("score", "1")
    assert standby.Prepared("score").fits("score", None) and \
        not standby.Prepared("score").fits("train", None)
    with pytest.raises(ValueError, match="--prepare STAGE"):
        standby.target_of([standby.FLAG, "--prepare"])


def test_stage_processes_load_lightgbm_and_pyarrow_without_pandas_or_sklearn() -> None:
    code = ("from batchline.lean_imports import skip_optional_imports\n"
            "skip_optional_imports()\n"
            "import sys, lightgbm, pyarrow.dataset, duckdb\n"
            "import pyarrow as pa\n"
            "con = duckdb.connect()\n"
            "con.register('t', pa.table({'a': [1, 2]}).to_reader())\n"
            "assert con.sql('SELECT sum(a) FROM t').fetchall() == [(3,)]\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'sklearn'}),\n"
            "      lightgbm.compat.SKLEARN_INSTALLED)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["[]", "False"]
