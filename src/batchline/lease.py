"""One writer per run: a lease object claimed before anything of the run is written.

`runs/<run_id>/lease.json` names its holder (host, pid, a random id) and when
it was last renewed. It is created only if absent (S3 `If-None-Match: *`, a
local exclusive create), renewed while the launcher lives, and deleted at the
end. A second launcher on a live run stops with a message naming the holder.
A lease whose holder is gone (expired, or its process dead on this host) is
taken over, with a conditional write (S3 `If-Match` on the ETag read, a local
file lock), so two launchers resuming at once still end with one holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from batchline import layout, storage
from batchline.conditional import ConditionalObject, conditional_object, guarded_call
from batchline.errors import BatchlineError
from batchline.retry import Retry

log = logging.getLogger(__name__)
LEASE = "lease.json"
TTL_SECONDS = 60.0


class RunLocked(BatchlineError):
    """Another live launcher holds the run."""

    exit_code = 2


class LeaseLost(BatchlineError):
    """This launcher's lease was taken over (it was paused past its TTL)."""


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    acquired_at: float
    renewed_at: float
    ttl: float

    def gone(self, now: float) -> bool:
        """Expired, or its process is dead on this very host."""
        if now > self.renewed_at + self.ttl:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def describe(self) -> str:
        age = time.time() - self.renewed_at
        return (f"launcher pid {self.pid} on {self.host} (since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.acquired_at))}, "
                f"renewed {age:.0f} s ago)")


class Lease:
    """The claim of one launcher on one run; `acquire()` before writing anything."""

    def __init__(self, root: str, run_id: str, ttl: float = TTL_SECONDS) -> None:
        self.uri = storage.join(layout.run_uri(root, run_id), LEASE)
        self._objects: ConditionalObject = conditional_object(self.uri)
        self.ttl = ttl
        self.token = secrets.token_hex(8)
        self.holder: Holder | None = None
        self._tag = ""
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry = Retry(seconds=ttl / 3)

    def _holder(self, acquired_at: float | None = None) -> Holder:
        now = time.time()
        return Holder(self.token, socket.gethostname(), os.getpid(), acquired_at or now, now,
                      self.ttl)

    def _call(self, fn: Any, what: str) -> Any:
        return guarded_call(self._retry, fn, what, self.uri, "the run's lease")

    def acquire(self, wait: float = 0.0) -> Holder:
        """Claim the run, taking over from a holder that is gone; RunLocked otherwise.

        `wait` seconds: how long to wait for a holder on another host to expire (a
        launcher pod replaced after an eviction, whose predecessor could not release);
        a holder still renewing when the wait ends is RunLocked all the same."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._acquire_once()
            except RunLocked as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                log.info("%s; waiting up to %.0f s for it to expire", exc, left)
                time.sleep(min(left, 1.0))

    def _acquire_once(self) -> Holder:
        mine = self._holder()
        data = json.dumps(asdict(mine)).encode()
        for _ in range(5):
            if self._call(lambda: self._objects.create(data), "claim"):
                return self._won(mine)
            current = self._call(self._objects.read, "read")
            if current is None:
                continue  # released meanwhile: try to create again
            raw, tag = current
            try:
                other = Holder(**json.loads(raw))
            except (ValueError, TypeError):
                other = None  # a damaged lease has no live holder
            if other is not None and not other.gone(time.time()):
                raise RunLocked(f"run is being run by {other.describe()}; wait for it to end "
                                f"(`batchline status`) or stop that launcher. Lease: {self.uri}")
            if self._call(lambda tag=tag: self._objects.replace(data, tag), "take over"):
                log.warning("run lease %s: took over from %s, which is gone", self.uri,
                            other.describe() if other else "a damaged lease")
                return self._won(mine)
        raise RunLocked(f"could not claim {self.uri}: other launchers keep claiming it")

    def _won(self, holder: Holder) -> Holder:
        self.holder = holder
        current = self._call(self._objects.read, "read")
        self._tag = current[1] if current else ""
        self._thread = threading.Thread(target=self._renew_loop, name="batchline-lease",
                                        daemon=True)
        self._thread.start()
        return holder

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except BatchlineError as exc:
                log.error("run lease %s: %s", self.uri, exc)
                if isinstance(exc, LeaseLost):
                    return

    def renew(self) -> None:
        """Push the expiry forward; LeaseLost if someone else holds the lease now."""
        assert self.holder is not None
        renewed = self._holder(self.holder.acquired_at)
        data = json.dumps(asdict(renewed)).encode()
        if not self._call(lambda: self._objects.replace(data, self._tag), "renew"):
            self._lost.set()
            raise LeaseLost(f"the lease {self.uri} was taken over by another launcher")
        self.holder = renewed
        current = self._call(self._objects.read, "read")
        self._tag = current[1] if current else ""

    def check(self) -> None:
        """Raise LeaseLost if the renewal thread found the lease taken."""
        if self._lost.is_set():
            raise LeaseLost(f"another launcher took over this run (lease {self.uri}); this "
                            "launcher stops without writing more")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.holder is not None and not self._lost.is_set():
            with contextlib.suppress(BatchlineError):
                self._call(lambda: self._objects.delete(self._tag), "release")
        self.holder = None


def live_holder(root: str, run_id: str) -> Holder | None:
    """The launcher holding a run's lease now, or None if no live launcher does."""
    uri = storage.join(layout.run_uri(root, run_id), LEASE)
    current = conditional_object(uri).read()
    if current is None:
        return None
    try:
        holder = Holder(**json.loads(current[0]))
    except (ValueError, TypeError):
        return None
    return None if holder.gone(time.time()) else holder
