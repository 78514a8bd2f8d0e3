"""SageMaker's container contract, as the stage entrypoint honours it.

SageMaker starts the same image with the same entrypoint; what differs is
where the stage finds its task and where it says how it ended:

- a **Training Job** runs the image with the argument `train`, and writes
  `/opt/ml/input/config/hyperparameters.json` (our task URI under
  `batchline_task`) and `resourceconfig.json` (`current_host` among `hosts`);
  on failure, `/opt/ml/output/failure` becomes the job's FailureReason, and
  whatever is in `/opt/ml/model` is kept as model.tar.gz;
- a **Processing Job** runs the image with our ContainerArguments
  (`<stage> --task <uri>`), and writes `/opt/ml/config/processingjobconfig.json`
  and `/opt/ml/config/resourceconfig.json`; on failure,
  `/opt/ml/output/message` becomes the job's ExitMessage.

A job with several instances runs one shard per host: host `algo-<n>` takes
shard n-1. The failure text starts with `exit code <n>:` so the launcher's
translator (backends/sagemaker_status.py) gets the exit code back.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchline import cache, storage
from batchline.errors import SpecError
from batchline.task import StageTask

log = logging.getLogger(__name__)

OPT_ML = Path("/opt/ml")
TASK_HYPERPARAMETER = "batchline_task"  # the same key as backends/sagemaker_job.py
# SageMaker keeps the first 1024 characters of the failure file.
MAX_FAILURE_CHARS = 1024


@dataclass(frozen=True)
class SageMakerJob:
    """The job this process runs in: "training" or "processing", rooted at /opt/ml."""

    kind: str
    root: Path = OPT_ML

    @property
    def config_dir(self) -> Path:
        return self.root / ("input/config" if self.kind == "training" else "config")

    @property
    def failure_file(self) -> Path:
        return self.root / "output" / ("failure" if self.kind == "training" else "message")

    def task_ref(self) -> str:
        """The task URI from hyperparameters.json (Training Jobs)."""
        params = _read_json(self.config_dir / "hyperparameters.json")
        ref = params.get(TASK_HYPERPARAMETER)
        if not isinstance(ref, str) or not ref:
            raise SpecError(f"{self.config_dir / 'hyperparameters.json'}: no "
                            f"{TASK_HYPERPARAMETER!r} hyperparameter; create the job with "
                            "`batchline run --backend sagemaker` or `batchline render`")
        return ref

    def host_index(self) -> int:
        """This host's place among the job's hosts (algo-1 -> 0): its shard."""
        path = self.config_dir / "resourceconfig.json"
        if not path.exists():
            return 0
        config = _read_json(path)
        hosts = sorted(config.get("hosts") or [], key=_host_number)
        current = config.get("current_host")
        if current not in hosts:
            raise SpecError(f"{path}: current_host {current!r} is not among hosts {hosts}")
        return hosts.index(current)

    def write_failure(self, code: int, message: str) -> None:
        """Say why the stage failed where SageMaker reads it (FailureReason / ExitMessage)."""
        text = f"exit code {code}: {message.strip() or 'see the job log'}"
        try:
            self.failure_file.parent.mkdir(parents=True, exist_ok=True)
            self.failure_file.write_text(text[:MAX_FAILURE_CHARS])
        except OSError as exc:  # never hide the stage's own failure behind this one
            log.warning("could not write %s: %s", self.failure_file, exc)

    def keep_model(self, task: StageTask) -> list[Path]:
        """Copy the committed model files into /opt/ml/model (SageMaker's model.tar.gz)."""
        if self.kind != "training" or "model" not in task.outputs:
            return []
        target = self.root / "model"
        target.mkdir(parents=True, exist_ok=True)
        uri = task.output_uri("model")
        kept = []
        for source in storage.file_uris(uri):
            path = target / source.rsplit("/", 1)[-1]
            path.write_bytes(storage.read_bytes(source))
            kept.append(path)
        return kept


def detect(root: Path = OPT_ML) -> SageMakerJob | None:
    """The SageMaker job this process runs in, or None outside SageMaker."""
    if (root / "input/config/hyperparameters.json").exists():
        return SageMakerJob("training", root)
    if (root / "config/processingjobconfig.json").exists():
        return SageMakerJob("processing", root)
    return None


def shard_already_committed(task: StageTask) -> bool:
    """Whether this shard committed in an earlier attempt with the same cache key.

    A job runs all shards on its hosts; when one host fails, the launcher
    creates the next attempt's job, and the hosts whose shard is committed
    finish at once: only the failed shard is computed again.
    """
    if task.shard_count < 2 or not task.cache_key:
        return False
    uris = {name: task.output_uri(name) for name in task.outputs}
    return cache.reusable(uris, task.cache_key) is not None


def _host_number(host: Any) -> tuple[int, str]:
    match = re.search(r"(\d+)$", str(host))
    return (int(match.group(1)) if match else 0, str(host))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read SageMaker's job configuration: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a JSON object")
    return data
