"""`batchline listen`: a long-polling SQS consumer that starts one run per new object.

For each message: parse it (events.py), claim and start each watched object's
run (event_runs.py), and only then delete the message. While a message is
being handled its visibility is extended, so a slow start (a Kubernetes API
round trip, a storage retry) is not handed to a second listener. A message
that cannot be acted on (not an event, an object the spec refuses) is left in
the queue with its reason logged: the queue's redrive policy moves it to the
dead-letter queue after maxReceiveCount receives, and other messages keep
flowing. A failure to start (storage or the cluster down) is left the same way
and retried when the message comes back.

Any number of listeners may share a queue: the claim, not the queue, makes a
run start once. SIGTERM (a Deployment's pod being replaced) finishes the
message in hand and stops.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchline.errors import BatchlineError, SpecError
from batchline.event_runs import EventRunner, Handled
from batchline.events import EventError, parse_message

log = logging.getLogger(__name__)


@dataclass
class Listener:
    """Consumes one queue for one EventRunner; `run()` until `stop()` or SIGTERM."""

    runner: EventRunner
    queue_url: str
    wait_seconds: int = 20  # SQS long polling: one request per 20 s on an idle queue
    # How long each extension keeps a message hidden: the queue's VisibilityTimeout.
    visibility_seconds: int = 0
    max_messages: int = 0  # stop after this many messages were handled (0: never)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._sqs = _sqs_client()
        if not self.visibility_seconds:
            try:
                attrs = self._sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                       AttributeNames=["VisibilityTimeout"])
            except Exception as exc:  # botocore's errors, as one message
                if not _refused(exc):  # SQS down or unreachable: exit 3, restart later
                    raise BatchlineError(
                        f"--queue {self.queue_url}: SQS did not answer ({exc}); nothing was "
                        "read from the queue. Check the network and the endpoint "
                        "(AWS_ENDPOINT_URL_SQS); the listener can simply be restarted") \
                        from exc
                raise SpecError(f"--queue {self.queue_url}: cannot read the queue ({exc}); "
                                "check the URL, the region and sqs:GetQueueAttributes") from exc
            self.visibility_seconds = max(1, int(attrs["Attributes"]["VisibilityTimeout"]))

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> Counter[str]:
        """Poll, handle, delete, until stopped; returns what happened, by outcome."""
        log.info("listening on %s for %s (bucket %s)", self.queue_url, self.runner.spec.name,
                 self.runner.spec.trigger.bucket if self.runner.spec.trigger else "?")
        failures = 0
        while not self._stop.is_set():
            try:
                got = self._sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=1,
                    WaitTimeSeconds=self.wait_seconds,
                    AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
                failures = 0
            except Exception as exc:  # botocore's errors after its own retries: keep going
                failures += 1
                log.error("cannot receive from %s: %s; trying again", self.queue_url, exc)
                self._stop.wait(min(2 ** failures, 60))
                continue
            for message in got:
                self.handle(message)
                if self.max_messages and sum(self.counts.values()) >= self.max_messages:
                    self.stop()
        log.info("listener stopped: %s", dict(self.counts))
        return self.counts

    def handle(self, message: dict[str, Any]) -> str:
        """One message: claim and start its runs, then delete it; or leave it to come back
        (a failure) or to the dead-letter queue (poison). Returns the outcome's name."""
        receipt = message["ReceiptHandle"]
        receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
        with _Extender(self._sqs, self.queue_url, receipt, self.visibility_seconds):
            try:
                events = parse_message(message.get("Body", ""))
                handled = [self.runner.handle(event) for event in events]
            except (EventError, SpecError) as exc:
                log.error("poison message %s (receive %s): %s; left for the queue's redrive "
                          "policy (dead-letter queue)", message.get("MessageId"), receives, exc)
                return self._count("poison")
            except (BatchlineError, OSError) as exc:
                log.error("message %s (receive %s): could not start its run: %s; it comes back "
                          "after its visibility timeout", message.get("MessageId"), receives,
                          exc)
                return self._count("failed")
            except Exception:  # a bug or an SDK's surprise: one message, not the listener
                log.exception("message %s (receive %s): unexpected error; it comes back after "
                              "its visibility timeout", message.get("MessageId"), receives)
                return self._count("failed")
        outcome = _summary(handled)
        try:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except Exception as exc:  # it comes back, and finds its run claimed: harmless
            log.warning("message %s: %s, but not deleted (%s)", message.get("MessageId"),
                        outcome, exc)
            return self._count(outcome)
        log.info("message %s: %s; deleted", message.get("MessageId"), outcome)
        return self._count(outcome)

    def _count(self, outcome: str) -> str:
        self.counts[outcome] += 1
        return outcome


def _summary(handled: list[Handled]) -> str:
    for outcome in (Handled.STARTED, Handled.RESUMED, Handled.DUPLICATE):
        if outcome in handled:
            return str(outcome)
    return str(Handled.IGNORED)


class _Extender:
    """Keeps a message invisible to other consumers while it is handled."""

    def __init__(self, sqs: Any, queue_url: str, receipt: str, seconds: int) -> None:
        self.sqs, self.queue_url, self.receipt, self.seconds = sqs, queue_url, receipt, seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchline-visibility",
                                        daemon=True)

    def __enter__(self) -> _Extender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._done.wait(self.seconds / 2):
            try:
                self.sqs.change_message_visibility(QueueUrl=self.queue_url,
                                                   ReceiptHandle=self.receipt,
                                                   VisibilityTimeout=self.seconds)
            except Exception as exc:  # botocore errors: the message may come back, logged
                log.warning("could not extend a message's visibility: %s", exc)


def _refused(exc: BaseException) -> bool:
    """Whether SQS answered and said no (a 4xx other than throttling: a wrong URL, a
    missing permission), as opposed to not answering (connection trouble, 5xx)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(response.get("Error", {}).get("Code", ""))
    return 400 <= status < 500 and status != 429 and "Throttl" not in code


def _sqs_client() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise SpecError("`batchline listen` reads SQS with boto3: "
                        "pip install 'batchline[aws]'") from exc
    return boto3.client("sqs")


def stop_on_sigterm(listener: Listener) -> None:
    """SIGTERM finishes the message in hand, then stops (a pod being replaced)."""
    def handler(signum: int, frame: object) -> None:
        log.info("SIGTERM: stopping after the message in hand")
        listener.stop()
    signal.signal(signal.SIGTERM, handler)
