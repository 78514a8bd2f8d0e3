"""Where everything of a run lives under the storage root.

    runs/<run_id>/manifest.json
    runs/<run_id>/<stage>/task-<attempt>[-<shard>].json
    runs/<run_id>/<stage>/<output>/_SUCCESS.json (+ data-*/part-*.parquet)
    runs/<run_id>/<stage>/logs/attempt-<n>[-shard-<i>].log
    cache/<stage>/<cache_key>.json   -> which run committed that stage's outputs
"""

from __future__ import annotations

import re
import secrets
import time

from batchline.errors import SpecError
from batchline.storage import join

# Full matches only: `$` would also accept a trailing newline.
RUN_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")

def new_run_id(pipeline: str) -> str:
    """A sortable, Kubernetes-name-safe run id: <pipeline>-<utc time>-<random>."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    rid = f"{pipeline[:12].rstrip('-')}-{stamp}-{secrets.token_hex(2)}"
    return check_run_id(rid)


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise SpecError(f"invalid run id {run_id!r}: use 1-32 lowercase letters, digits and '-', "
                        "starting and ending with a letter or digit")
    return run_id


def run_uri(root: str, run_id: str) -> str:
    return join(root, "runs", check_run_id(run_id))


def manifest_uri(root: str, run_id: str) -> str:
    return join(run_uri(root, run_id), "manifest.json")


def cancel_uri(root: str, run_id: str) -> str:
    """A request to cancel the run, written by `batchline cancel`, read by its launcher."""
    return join(run_uri(root, run_id), "cancel-request.json")


def output_uri(root: str, run_id: str, stage: str, output: str) -> str:
    return join(run_uri(root, run_id), stage, output)


def shard_uri(dataset_uri: str, index: int) -> str:
    return join(dataset_uri, f"shard-{index:05d}")


def task_uri(root: str, run_id: str, stage: str, attempt: int, shard: int | None = None) -> str:
    suffix = f"-{shard}" if shard is not None else ""
    return join(run_uri(root, run_id), stage, f"task-{attempt}{suffix}.json")


def log_uri(root: str, run_id: str, stage: str, attempt: int, shard: int | None = None) -> str:
    suffix = f"-shard-{shard}" if shard is not None else ""
    return join(run_uri(root, run_id), stage, "logs", f"attempt-{attempt}{suffix}.log")


def cache_uri(root: str, stage: str, key: str) -> str:
    return join(root, "cache", stage, f"{key}.json")
