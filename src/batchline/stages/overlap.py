"""Run a producer of batches on its own thread, so its work overlaps the consumer's.

A stage that reads, parses and types blocks and then writes them as Parquet
does both one after the other on one core, although most of each step runs
inside pyarrow with the GIL released. `overlap(items)` iterates `items` on a
helper thread, at most `depth` items ahead, and hands them over in order: the
caller writes block k while the helper parses block k+1. The items, their
order and every exception are exactly those of iterating `items` directly, so
the output is byte for byte the same.

With a CPU budget of one core (cpu.threads) there is nothing to overlap, and
the items are iterated in the caller's thread as before.

Stopping: when the caller stops early (an exception, a SIGTERM turned into
SystemExit, or simply breaking out), the helper is told to stop at its next
item and is not waited for beyond that; it is a daemon thread, so a helper
stuck in a read cannot keep the process alive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

from batchline import cpu

T = TypeVar("T")
_DONE = object()
_POLL_SECONDS = 0.1


class _Raised:
    """An exception the helper met, carried to the caller to be raised there."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def overlap(items: Iterable[T], depth: int = 2, name: str = "overlap") -> Generator[T, None, None]:
    """`items`, iterated on a helper thread at most `depth` items ahead of the caller."""
    if cpu.threads(2) < 2:
        yield from items
        return
    handed: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand(item: object) -> bool:
        # A bounded put that gives up once the caller has gone.
        while not stop.is_set():
            try:
                handed.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not hand(item):
                    return
        except BaseException as exc:  # every one, to be raised in the caller
            hand(_Raised(exc))
            return
        finally:
            # On this thread: a generator's cleanup (closing its file) runs where it ran.
            close = getattr(source, "close", None)
            if close is not None:
                close()
        hand(_DONE)

    helper = threading.Thread(target=produce, name=name, daemon=True)
    helper.start()
    try:
        while True:
            item = handed.get()
            if item is _DONE:
                break
            if isinstance(item, _Raised):
                raise item.exc
            yield item  # type: ignore[misc]
        helper.join()
    finally:
        stop.set()
