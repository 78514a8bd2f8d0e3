"""Ctrl-C and SIGTERM held back while a stage is being started.

A launcher told to stop cancels the stages it has handles for. A signal that
lands inside `backend.submit`, after the platform started the stage but
before the handle came back, would leave that stage running with nobody to
cancel it (a local process, a container or a Job orphaned by a "cancelled"
run). So the signal is recorded during the start and delivered again, to the
handlers that were in place, as soon as the start has returned and its handle
is kept.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block; deliver any that came once it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers, and only it receives signals
        return
    caught: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    saved = {signum: signal.signal(signum, record) for signum in HELD}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            # None: a handler not set from Python; the default is the closest
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for received in dict.fromkeys(caught):
            signal.raise_signal(received)
