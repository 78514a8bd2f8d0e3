"""How many threads a stage may run: the CPU it really has, never more.

A stage process may see two cores and yet be allowed one: a Kubernetes pod's
CPU limit (a cgroup quota), a `taskset` or cpuset (the CPU affinity), the
spec's `resources.cpu`, or several workers sharing one host. Thread pools
sized from the core count then oversubscribe the CPU, and LightGBM's OpenMP
threads, which by default spin while they wait for each other, collapse: a
100-tree fit measured at 15-27 s took 66-205 s with the spinning policy on a
busy two-core machine.

So the stage entrypoint calls `apply()` once, before any stage module is
imported: it fixes the CPU budget (the minimum of the cgroup quota, the
affinity and the spec's cpu rounded up, divided among `BATCHLINE_CPU_WORKERS`
workers, at least 1), sizes Arrow's pool to it, and sets OpenMP's wait policy
before libgomp is loaded (it is read once, at load). Stage code then asks
`threads(params.num_threads)` for each pool it sizes.

Environment (set by the launcher, a backend, a pod spec, or by hand):

- `BATCHLINE_OMP_WAIT_POLICY`: `passive` (default) or `active`. Active spins
  and is a little faster on an idle, dedicated machine; it collapses under
  contention. An `OMP_WAIT_POLICY` already set is kept when this is unset.
- `BATCHLINE_CPU_WORKERS`: how many stage processes share this host's CPU at
  once (e.g. a local fleet training several models); each gets its share.
- `BATCHLINE_STAGE_CPUS`: written by `apply()` for the stage's own code and
  children; setting it by hand caps the budget further.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from batchline.errors import SpecError
from batchline.quantity import cpu_cores

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
WAIT_POLICIES = ("passive", "active")
DEFAULT_WAIT_POLICY = "passive"
BUDGET_ENV = "BATCHLINE_STAGE_CPUS"
WORKERS_ENV = "BATCHLINE_CPU_WORKERS"
WAIT_POLICY_ENV = "BATCHLINE_OMP_WAIT_POLICY"


def _cgroup_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path under v2 (`0::/path`) and under v1's cpu controller."""
    v2 = v1 = None
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, path: str | None) -> list[Path]:
    """`base/path` and each of its parents up to `base` (a quota anywhere above applies)."""
    out = [base]
    if path:
        current = base
        for part in [p for p in path.split("/") if p]:
            current = current / part
            out.append(current)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "150000 100000"
    if not text:
        return None
    fields = text.split()
    if fields[0] == "max" or len(fields) != 2:
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def cgroup_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in cores) of this process's cgroup and its parents, or None.

    Reads cgroup v2's `cpu.max`, else v1's `cpu.cfs_quota_us / cpu.cfs_period_us`
    (mounted as `cpu` or `cpu,cpuacct`), along the path /proc/self/cgroup
    names; inside a container that path is `/` and the files sit at the root.
    `root` and `self_cgroup` are arguments so tests can point at fake files.
    """
    v2_path, v1_path = _cgroup_paths(self_cgroup)
    quotas = [q for folder in _ancestors(root, v2_path) if (q := _v2_quota(folder))]
    if not quotas:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = root / mount
            if base.is_dir():
                quotas = [q for folder in _ancestors(base, v1_path) if (q := _v1_quota(folder))]
                break
    return min(quotas) if quotas else None


def affinity() -> int:
    """CPUs this process may be scheduled on (taskset, cpuset), else the core count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuBudget:
    """Whole cores a stage may keep busy, and what limited it (for the log)."""

    cores: int
    limits: tuple[str, ...]

    def threads(self, asked: int) -> int:
        """What the params ask, never more than the budget, at least 1."""
        return max(1, min(asked, self.cores))

    def describe(self) -> str:
        return ", ".join(self.limits)


def budget(spec_cpu: str | None = None, workers: int = 1, root: Path = CGROUP_ROOT,
           self_cgroup: Path = SELF_CGROUP, cores: int | None = None) -> CpuBudget:
    """The CPU really available: min(cgroup quota, affinity, spec cpu rounded up) / workers.

    Floored to whole cores and at least 1: a 1.5-core quota runs one thread
    (two would be throttled for a third of every period and stall each other).
    `cores` stands in for the affinity in tests.
    """
    candidates: list[tuple[float, str]] = []
    quota = cgroup_quota(root, self_cgroup)
    candidates.append((quota, f"cgroup quota {quota:g}") if quota else
                      (math.inf, "no cgroup quota"))
    count = affinity() if cores is None else cores
    candidates.append((float(count), f"affinity {count}"))
    if spec_cpu:
        try:
            asked = math.ceil(cpu_cores(spec_cpu))
        except ValueError as exc:
            raise SpecError(f"resources.cpu: {exc}") from None
        candidates.append((float(asked), f"spec cpu {spec_cpu}"))
    available = min(value for value, _ in candidates)
    limits = [text for _, text in candidates]
    if workers > 1:
        available /= workers
        limits.append(f"shared by {workers} workers")
    return CpuBudget(max(1, math.floor(available)), tuple(limits))


def wait_policy(environ: MutableMapping[str, str]) -> str:
    """OpenMP's wait policy: BATCHLINE_OMP_WAIT_POLICY, else OMP_WAIT_POLICY, else passive."""
    value = environ.get(WAIT_POLICY_ENV) or environ.get("OMP_WAIT_POLICY") \
        or DEFAULT_WAIT_POLICY
    if value.lower() not in WAIT_POLICIES:
        source = WAIT_POLICY_ENV if environ.get(WAIT_POLICY_ENV) else "OMP_WAIT_POLICY"
        raise SpecError(f"{source}={value!r}: known wait policies are "
                        f"{', '.join(WAIT_POLICIES)}")
    return value.lower()


def workers_with_shards(shards: int, environ: MutableMapping[str, str]) -> str:
    """BATCHLINE_CPU_WORKERS for one of `shards` processes that a backend starts at once on
    this host: each divides the CPU by the shards, times the workers already declared."""
    return str(_workers(environ) * max(1, shards))


def _workers(environ: MutableMapping[str, str]) -> int:
    text = environ.get(WORKERS_ENV, "1") or "1"
    try:
        workers = int(text)
    except ValueError:
        raise SpecError(f"{WORKERS_ENV}={text!r}: give a whole number of workers") from None
    if workers < 1:
        raise SpecError(f"{WORKERS_ENV}={text!r}: give at least 1 worker")
    return workers


def apply(spec_cpu: str | None, environ: MutableMapping[str, str] | None = None
          ) -> tuple[CpuBudget, str]:
    """Fix this process's CPU budget and OpenMP policy; call before LightGBM is imported.

    Writes OMP_WAIT_POLICY, OMP_NUM_THREADS (when unset) and
    BATCHLINE_STAGE_CPUS into `environ` (os.environ by default, inherited by
    any child) and sizes Arrow's CPU pool. Returns the budget and the policy.
    """
    env = os.environ if environ is None else environ
    found = budget(spec_cpu, _workers(env))
    capped = env.get(BUDGET_ENV, "")
    if capped.isdigit() and 0 < int(capped) < found.cores:
        found = CpuBudget(int(capped), (*found.limits, f"{BUDGET_ENV} {capped}"))
    policy = wait_policy(env)
    env["OMP_WAIT_POLICY"] = policy.upper()
    env.setdefault("OMP_NUM_THREADS", str(found.cores))
    env[BUDGET_ENV] = str(found.cores)
    import pyarrow as pa  # here, so the launcher can import this module cheaply

    pa.set_cpu_count(found.cores)
    return found, policy


def threads(asked: int, environ: MutableMapping[str, str] | None = None) -> int:
    """Threads for a pool the params size at `asked`: never above the stage's CPU budget.

    Inside a stage process the budget is the one `apply()` fixed; called
    elsewhere (a test, a notebook) it is measured here, without a spec cpu.
    """
    env = os.environ if environ is None else environ
    fixed = env.get(BUDGET_ENV, "")
    cores = int(fixed) if fixed.isdigit() and int(fixed) > 0 else \
        budget(workers=_workers(env)).cores
    return max(1, min(asked, cores))
