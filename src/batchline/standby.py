"""A warm stage process: started and imported ahead, it waits for its stage.

`python -m batchline.stage --standby` imports what every stage needs, then
reads the stage's arguments (one JSON list of strings, one line) from stdin
and runs as if started with them. The local backend keeps one such process
ready while a stage runs, so the next stage's interpreter start and imports
(about 1 s of a 2-core machine, paid by every stage process) overlap the
stage before it instead of adding to the run. Each standby runs one stage and
exits: no state is shared between stages.

A standby whose stdin closes before any arguments arrive (the run ended, or
the launcher died) exits 0 without doing anything.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from typing import TextIO

FLAG = "--standby"

# Loaded ahead because they read nothing of the task when imported. LightGBM
# is not among them: its OpenMP runtime reads OMP_WAIT_POLICY and
# OMP_NUM_THREADS once, when it loads, and the task's CPU budget sets them.
WARM_MODULES = ("pyarrow.parquet", "pyarrow.dataset", "pyarrow.compute", "duckdb")


def warm_up() -> None:
    for name in WARM_MODULES:
        # An image without the module is one whose stage does not need it.
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def await_arguments(stream: TextIO) -> list[str] | None:
    """The stage's arguments from `stream`, or None when it closes first."""
    line = stream.readline()
    if not line.strip():
        return None
    args = json.loads(line)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"a standby stage process expects one JSON list of strings on "
                         f"stdin, got {line.strip()[:200]!r}")
    return args


def encode(args: list[str]) -> bytes:
    """What the backend writes to a standby's stdin to hand it a stage."""
    return (json.dumps(args) + "\n").encode()
