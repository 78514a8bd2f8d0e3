"""From an object event to exactly one started run: match, refuse, claim, start.

The SQS listener (listener.py) and the Lambda handler (aws_lambda.py) both
hand each `ObjectEvent` to `EventRunner.handle`, which returns what it did.
Starting is idempotent: the run id comes from the object version, so a claim
taken over after its first holder died finds whatever that holder got done (a
manifest, a launcher) and completes it, by `resume`, never by a second run.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchline import events
from batchline.claims import CLAIM_TTL_SECONDS, Claim, Outcome
from batchline.client import Client, start_launcher
from batchline.errors import StorageError
from batchline.events import EventError, ObjectEvent
from batchline.lease import live_holder
from batchline.manifest import RunManifest, RunState
from batchline.spec import PipelineSpec, load_spec, parse_spec

log = logging.getLogger(__name__)
LAUNCH_GRACE_SECONDS = 30.0


class Handled(enum.StrEnum):
    IGNORED = "ignored"  # not an object this spec watches
    STARTED = "started"  # this caller started the run
    DUPLICATE = "duplicate"  # the run was claimed already; nothing started
    RESUMED = "resumed"  # the run was started once, and its launcher died: resumed


@dataclass
class EventRunner:
    """Starts runs of one spec for the objects its `trigger:` watches."""

    spec_path: str
    storage: str | None = None
    backend: str = "local"
    options: Mapping[str, Any] = field(default_factory=dict)
    claim_ttl: float = CLAIM_TTL_SECONDS
    # Where each run's launcher runs: local (a detached process), kubernetes (a Job) or
    # sagemaker (a Processing Job); default: the backend's own place, else local.
    launcher: str = ""
    # `--set` overrides of the spec (the trigger's bucket per environment, say).
    sets: Mapping[str, Any] = field(default_factory=dict)
    # Test seam for kill tests: called with "claimed", "launched" (the run started, the
    # claim not yet marked) and "started" (see listener.hold_from_env).
    checkpoint: Callable[[str], None] = field(default=lambda where: None)

    def __post_init__(self) -> None:
        self.spec: PipelineSpec = load_spec(self.spec_path, dict(self.sets))
        if self.spec.trigger is None:
            raise EventError(f"{self.spec_path}: has no trigger section; add one naming the "
                             "bucket (and prefix/suffix) whose new objects start runs")
        self.client = Client(self.storage)
        self.root = self.client.root(self.spec)
        # A wrong backend option is this listener's fault, not any message's: say so now,
        # not by sending every message to the dead-letter queue.
        from batchline.backends import validate_options

        validate_options(self.backend, {**self.spec.backend_options(self.backend),
                                        **dict(self.options)}, "--option")
        if not self.launcher:
            self.launcher = self.backend if self.backend in ("kubernetes", "sagemaker") \
                else "local"

    def handle(self, event: ObjectEvent) -> Handled:
        """Claim and start the run this object version asks for; EventError if the spec
        refuses the object (retrying will not help)."""
        assert self.spec.trigger is not None
        if not events.matches(self.spec.trigger, event):
            log.info("event %s: not watched by %s (bucket %s, prefix %r, suffix %r); ignored",
                     event.describe(), self.spec.name, self.spec.trigger.bucket,
                     self.spec.trigger.prefix, self.spec.trigger.suffix)
            return Handled.IGNORED
        why = events.refusal(self.spec, event)
        if why:
            raise EventError(f"event {event.describe()}: refused: {why}")
        sets = events.overrides_for(self.spec, event)
        spec = parse_spec(self.spec.model_dump(mode="json"), self.spec_path, dict(sets))
        run_id = events.run_id_for(self.spec.name, event)
        claim = Claim(self.root, run_id, event, ttl=self.claim_ttl)
        outcome = claim.acquire()
        if outcome is Outcome.STARTED and self._revive(spec, run_id):
            log.warning("event %s: run %s had lost its launcher; resumed", event.describe(),
                        run_id)
            return Handled.RESUMED
        if outcome in (Outcome.STARTED, Outcome.BUSY):
            log.info("event %s: run %s already %s; nothing started", event.describe(), run_id,
                     "started" if outcome is Outcome.STARTED else "being started by "
                     f"pid {claim.record.holder.get('pid') if claim.record else '?'}")
            return Handled.DUPLICATE
        log.info("event %s: claimed run %s (%s)", event.describe(), run_id, outcome)
        self.checkpoint("claimed")
        how = self._start(spec, run_id)
        self.checkpoint("launched")
        claim.started()
        log.info("event %s: run %s %s", event.describe(), run_id, how)
        self.checkpoint("started")
        return Handled.STARTED

    def _revive(self, spec: PipelineSpec, run_id: str) -> bool:
        """Resume a started run whose launcher died (stale, no live lease holder): a
        later delivery of its event takes it over by `resume`, never by a second run."""
        try:
            manifest = RunManifest.load(self.root, run_id)
        except StorageError:
            return False
        if manifest.shown_state() != "stale" or live_holder(self.root, run_id) is not None:
            return False
        start_launcher(manifest, spec.image("launcher"), self.launcher)
        return True

    def _start(self, spec: PipelineSpec, run_id: str) -> str:
        """Start the run, or finish starting it where a dead claimer left off."""
        try:
            manifest: RunManifest | None = RunManifest.load(self.root, run_id)
        except StorageError:
            manifest = None
        if manifest is None:
            self.client.submit(spec, backend=self.backend, options=self.options,
                               run_id=run_id, launcher=self.launcher)
            return f"submitted ({self.backend}, launcher: {self.launcher})"
        if manifest.state.ended:
            return f"had already ended ({manifest.state})"
        if self.launcher == "local" and (live_holder(self.root, run_id) is not None
                                         or _just_submitted(manifest)):
            return "already running"
        # A launcher Job or job of the run's own name is kept if it exists (409).
        where = start_launcher(manifest, spec.image("launcher"), self.launcher)
        return f"resumed by {where} (its first claimer died while starting it)"


def _just_submitted(manifest: RunManifest) -> bool:
    # A detached launcher takes a moment to take the lease of a pending run.
    return manifest.state is RunState.PENDING and \
        time.time() - manifest.created_at < LAUNCH_GRACE_SECONDS
