"""One run per object version: a claim object created only if absent.

`claims/<run_id>.json` under the storage root is created with a conditional
write (S3 `If-None-Match: *`, a local exclusive create) by whoever receives an
event first. Every other delivery of the same event, and every other listener,
finds the claim and starts nothing. The claim records its holder and moves
from `claimed` to `started` once the run's manifest and launcher exist; a
claim still `claimed` whose holder is gone (its process dead on this host, or
silent past the TTL) is taken over with a conditional replace, so the run is
started once even when a listener dies between claiming and starting.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from batchline import layout, storage
from batchline.conditional import ConditionalObject, conditional_object, guarded_call
from batchline.errors import BatchlineError
from batchline.events import ObjectEvent
from batchline.lease import Holder
from batchline.retry import Retry

log = logging.getLogger(__name__)
# How long a claim may stay `claimed` before another listener may take it over: a
# listener dead on another host is known only by its silence.
CLAIM_TTL_SECONDS = 120.0


class Outcome(enum.StrEnum):
    WON = "won"  # this caller claimed the run: start it
    TAKEN_OVER = "taken over"  # the first claimer died before starting it: start it
    STARTED = "started"  # a duplicate: the run was started already
    BUSY = "busy"  # another live claimer is starting it now


@dataclass
class ClaimRecord:
    run_id: str
    source: dict[str, str]
    state: str  # claimed | started
    holder: dict[str, Any]
    claimed_at: float
    started_at: float | None = None
    takeovers: list[dict[str, Any]] = field(default_factory=list)


class Claim:
    """The claim of one object version's run; `acquire()` says what to do."""

    def __init__(self, root: str, run_id: str, event: ObjectEvent,
                 ttl: float = CLAIM_TTL_SECONDS) -> None:
        self.run_id = layout.check_run_id(run_id)
        self.uri = claim_uri(root, run_id)
        self.event = event
        self.ttl = ttl
        self.holder = Holder(secrets.token_hex(8), socket.gethostname(), os.getpid(),
                             time.time(), time.time(), ttl)
        self._objects: ConditionalObject = conditional_object(self.uri)
        self._retry = Retry(seconds=30.0)
        self._tag = ""
        self.record: ClaimRecord | None = None

    def _call(self, fn: Any, what: str) -> Any:
        return guarded_call(self._retry, fn, what, self.uri, "the run's claim")

    def acquire(self) -> Outcome:
        """Claim the run: WON or TAKEN_OVER (start it), STARTED or BUSY (do nothing)."""
        mine = ClaimRecord(self.run_id, {"uri": self.event.uri, **asdict(self.event)},
                           "claimed", asdict(self.holder), time.time())
        for _ in range(5):
            if self._call(lambda: self._objects.create(_dump(mine)), "create"):
                return self._hold(mine, Outcome.WON)
            current = self._call(self._objects.read, "read")
            if current is None:
                continue  # deleted meanwhile (by hand): create again
            raw, tag = current
            other = _load(raw)
            if other is not None and other.state == "started":
                self.record = other
                return Outcome.STARTED
            if other is not None and not Holder(**other.holder).gone(time.time()):
                self.record = other
                return Outcome.BUSY
            taken = ClaimRecord(**{**asdict(mine), "claimed_at": other.claimed_at if other
                                   else mine.claimed_at,
                                   "takeovers": [*(other.takeovers if other else []),
                                                 {"from": other.holder if other else None,
                                                  "at": time.time()}]})
            if self._call(lambda tag=tag, taken=taken: self._objects.replace(_dump(taken), tag),
                          "take over"):
                log.warning("claim %s: took over from %s, which died before starting the run",
                            self.uri, _who(other))
                return self._hold(taken, Outcome.TAKEN_OVER)
        raise BatchlineError(f"could not claim {self.uri}: other listeners keep replacing it")

    def _hold(self, record: ClaimRecord, outcome: Outcome) -> Outcome:
        self.record = record
        current = self._call(self._objects.read, "read")
        self._tag = current[1] if current else ""
        return outcome

    def started(self) -> None:
        """Mark the run started: from now on every delivery is a duplicate."""
        assert self.record is not None
        done = ClaimRecord(**{**asdict(self.record), "state": "started",
                              "started_at": time.time()})
        if not self._call(lambda: self._objects.replace(_dump(done), self._tag), "mark"):
            # Taken over while we started it: the taker found the manifest (or will)
            # and starts nothing twice; its record says started soon enough.
            log.warning("claim %s: changed by another listener while starting the run",
                        self.uri)
            return
        self.record = done


def claim_uri(root: str, run_id: str) -> str:
    return storage.join(root, "claims", f"{layout.check_run_id(run_id)}.json")


def read_claim(root: str, run_id: str) -> ClaimRecord | None:
    """The claim of a run, or None if it has none."""
    current = conditional_object(claim_uri(root, run_id)).read()
    return _load(current[0]) if current else None


def _dump(record: ClaimRecord) -> bytes:
    return json.dumps(asdict(record), sort_keys=True).encode()


def _load(raw: bytes) -> ClaimRecord | None:
    try:
        return ClaimRecord(**json.loads(raw))
    except (ValueError, TypeError):
        return None  # damaged: it has no live holder


def _who(record: ClaimRecord | None) -> str:
    if record is None:
        return "a damaged claim"
    holder = record.holder
    return f"pid {holder.get('pid')} on {holder.get('host')}"
