"""Cache keys: what a stage's outputs depend on, and where earlier commits are.

A stage's key hashes its image (or the local interpreter), the version of the
code that computes it, its params and shard count, and the fingerprints of
its inputs (upstream datasets' checksums; the raw source files' sizes and
modification times). Equal keys mean equal outputs, so a committed dataset
with the same key is reused instead of recomputed, after checking that every
file it lists is still there with its committed size (and, with `verify`,
its sha256). The parts are kept beside the key so that `batchline explain`
can say which one changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from batchline import layout, storage
from batchline.errors import DataError, StorageError

log = logging.getLogger(__name__)

# The modules whose code decides what a stage writes. Launcher, CLI and
# backends are left out on purpose: changing them must not invalidate data.
_CODE = ("stage.py", "storage.py", "params.py", "metrics.py", "task.py", "fleet.py", "stages")


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the source files that compute stage outputs."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _CODE:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def source_fingerprint(source: str, field: str = "source") -> str:
    """Names, sizes and modification times of the raw files (cheap: no reading)."""
    fs, path = storage.resolve(source)

    def look_up() -> list[pafs.FileInfo] | None:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        return [info] if info.type == pafs.FileType.File else \
            fs.get_file_info(pafs.FileSelector(path, recursive=True))
    infos = storage.retrying(look_up, "look up", source)
    if infos is None:
        raise DataError(f"source {source} does not exist; check {field}")
    digest = hashlib.sha256()
    for i in sorted(infos, key=lambda i: i.path):
        if i.type == pafs.FileType.File:
            digest.update(f"{i.path}|{i.size}|{i.mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def key_of(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def explain_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One line saying what differs between two sets of key parts."""
    if not old:
        return "no earlier run of this pipeline to compare with"
    changes = []
    for field in ("image", "code_version", "shards"):
        if old.get(field) != new.get(field):
            changes.append(f"{field.replace('_', ' ')} changed ({old.get(field)} -> "
                           f"{new.get(field)})")
    old_params, new_params = old.get("params", {}), new.get("params", {})
    for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key) != new_params.get(key):
            before, after = _short(old_params.get(key)), _short(new_params.get(key))
            changes.append(f"param {key} changed ({before} -> {after})")
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for key in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(key) != new_inputs.get(key):
            changes.append(f"input {key} changed")
    return "; ".join(changes) if changes else "nothing changed since the last run"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Hit:
    """Committed outputs that a stage may reuse."""

    run_id: str
    outputs: dict[str, str]
    records: dict[str, storage.SuccessRecord]


# Called with a problem found in a candidate (a missing file, a changed checksum).
OnProblem = Callable[[str], None]


def lookup(root: str, run_id: str, stage: str, outputs: tuple[str, ...], key: str,
           verify: bool = False, on_problem: OnProblem | None = None) -> Hit | None:
    """Committed outputs of `stage` with this key: this run's own first, then any run's.

    A candidate is taken only if every file its records list is intact; a
    damaged one is reported through `on_problem` and skipped, so the stage
    reruns instead of reusing it.
    """
    report = on_problem or (lambda problem: None)
    own = {out: layout.output_uri(root, run_id, stage, out) for out in outputs}
    candidates = [(run_id, own)]
    entry = _cache_entry(root, stage, key)
    if entry is not None and entry[1] != own:
        candidates.append(entry)
    for owner, uris in candidates:
        records = reusable(uris, key, verify, report)
        if records is None:
            continue
        if owner == run_id and any(partial(r) for r in records.values()):
            # Resuming the run that committed it: redo the failed parts (the stage
            # keeps what succeeded). Other runs reuse it as it is.
            log.info("stage %s: its commit in this run has failed parts %s; running it again "
                     "for them", stage, [p for r in records.values()
                                         for p in r.metrics.get("failed_parts", [])])
            continue
        return Hit(owner, uris, records)
    return None


def partial(record: storage.SuccessRecord) -> bool:
    """Whether a commit lists failed parts (segments of a fleet) that a resume redoes."""
    return bool(record.metrics.get("failed_parts"))


def reusable(outputs: dict[str, str], key: str, verify: bool = False,
             on_problem: OnProblem | None = None) -> dict[str, storage.SuccessRecord] | None:
    """The records of `outputs` if every one is committed with `key` and its files are
    intact (sizes; sha256 with `verify`); None otherwise, problems reported."""
    records = _committed_with_key(outputs, key)
    if records is None:
        return None
    problems = [problem for name, record in records.items()
                for problem in storage.verify(outputs[name], record, verify)]
    for problem in problems:
        (on_problem or (lambda _: None))(problem)
    return None if problems else records


def _cache_entry(root: str, stage: str, key: str) -> tuple[str, dict[str, str]] | None:
    uri = layout.cache_uri(root, stage, key)
    try:
        entry = json.loads(storage.read_text(uri))
        return str(entry["run_id"]), {str(k): str(v) for k, v in entry["outputs"].items()}
    except StorageError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("cache record %s is unreadable; ignoring it", uri)
        return None


def _committed_with_key(outputs: dict[str, str], key: str
                        ) -> dict[str, storage.SuccessRecord] | None:
    records = {}
    for name, uri in outputs.items():
        record = storage.read_success(uri)
        if record is None or record.meta.get("cache_key") != key:
            return None
        records[name] = record
    return records or None


def remember(root: str, stage: str, key: str, run_id: str, outputs: dict[str, str]) -> None:
    """Point the key at the run that committed it, for later runs to reuse."""
    storage.write_text(layout.cache_uri(root, stage, key),
                       json.dumps({"run_id": run_id, "outputs": outputs}, sort_keys=True))
