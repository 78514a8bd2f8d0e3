"""Holds: a process stops at a named point so a test can act exactly there.

`BATCHLINE_HOLD=POINT:MARKER` makes the process write its pid to MARKER when it
reaches POINT, then sleep until it is signalled or killed. The kill tests use
it to stop a listener between claiming a message and starting its run, or a
stage once it has started, without racing the work it would otherwise finish.
Unset, a hold is a string comparison.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

HOLD_ENV = "BATCHLINE_HOLD"


def hold_from_env() -> Callable[[str], None]:
    """A checkpoint function: call it with a point's name; it blocks at the held one."""
    where, _, marker = os.environ.get(HOLD_ENV, "").partition(":")

    def checkpoint(point: str) -> None:
        if where and point == where:
            with open(marker, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(3600)  # until the test signals or kills this process
    return checkpoint
