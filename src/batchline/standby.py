"""A warm stage process: started and imported ahead, it waits for its stage.

`python -m batchline.stage --standby` imports what every stage needs, then
reads the stage's arguments (one JSON list of strings, one line) from stdin
and runs as if started with them. The local backend keeps one such process
ready while a stage runs, so the next stage's interpreter start and imports
(about 1 s of a 2-core machine, paid by every stage process) overlap the
stage before it instead of adding to the run. Each standby runs one stage and
exits: no state is shared between stages.

`--standby --prepare STAGE [--cpu CPU]` goes further when the launcher knows
which stage comes next: it fixes that stage's CPU budget and OpenMP policy
(`cpu.apply`, as the stage itself would) and then imports the stage's own
module, LightGBM included, whose OpenMP runtime reads that policy once, when
it loads. Such a process runs only that stage with that CPU request: the
backend starts any other stage cold.

A standby whose stdin closes before any arguments arrive (the run ended, or
the launcher died) exits 0 without doing anything.

This module is the protocol between the two sides (the backend that starts
and feeds a standby, and batchline.stage, which warms up): it imports no
stage code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TextIO

FLAG = "--standby"


@dataclass(frozen=True)
class Prepared:
    """The one stage, with its CPU request, a standby has set itself up for."""

    stage: str
    cpu: str | None = None

    def arguments(self) -> list[str]:
        return ["--prepare", self.stage, *(["--cpu", self.cpu] if self.cpu else [])]

    def fits(self, stage: str, cpu: str | None) -> bool:
        return self.stage == stage and (self.cpu or None) == (cpu or None)


def is_standby(argv: list[str]) -> bool:
    return bool(argv) and argv[0] == FLAG


def target_of(argv: list[str]) -> Prepared | None:
    """What a standby's command line (`is_standby`) prepares for; None: nothing."""
    rest = argv[1:]
    if not rest:
        return None
    if len(rest) in (2, 4) and rest[0] == "--prepare" and (len(rest) == 2 or rest[2] == "--cpu"):
        return Prepared(rest[1], rest[3] if len(rest) == 4 else None)
    raise ValueError(f"a standby stage process takes {FLAG} [--prepare STAGE [--cpu CPU]], "
                     f"got {' '.join(argv)!r}")


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
