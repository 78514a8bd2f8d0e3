"""One retry policy for storage calls: bounded exponential backoff with full jitter.

As the AWS SDKs do, it retries throttling, server errors (5xx) and dropped
or timed-out connections, and nothing else: a missing key, a full or
read-only disk, a denied request fail at once. pyarrow's own S3 client also
retries each request (AwsStandardS3RetryStrategy); this policy sits above it
for the small metadata objects the launcher cannot do without (manifest,
task files, logs, cache records), so a minute of trouble is ridden out.
When the budget is spent, the error names the URI and what to check.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from batchline.errors import StorageUnavailable
from batchline.storage_errors import check_host, misconfiguration, outage_advice

log = logging.getLogger(__name__)
T = TypeVar("T")

# How pyarrow's S3 client words what may heal (AWS SDK error names, HTTP 5xx,
# curl's connection failures).
_TRANSIENT = re.compile(
    r"SLOW_DOWN|THROTTL|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|NETWORK_CONNECTION|"
    r"REQUEST_TIMEOUT|HTTP status 5\d\d|curlCode|Connection reset|Connection refused|"
    r"timed out|Timeout was reached", re.IGNORECASE)
PERMANENT_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is "
                     "read-only", errno.EACCES: "permission denied", errno.EPERM:
                     "permission denied", errno.ENOTDIR: "a path component is a file, "
                     "not a folder", errno.EISDIR: "it is a folder", errno.EDQUOT:
                     "the disk quota is used up"}


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx and connection trouble: worth another try."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno is None and bool(_TRANSIENT.search(str(exc)))


@dataclass(frozen=True)
class Retry:
    """Bounded exponential backoff with full jitter; `seconds` bounds the whole call."""

    attempts: int = 8
    initial: float = 0.2
    maximum: float = 10.0
    seconds: float = 60.0

    @classmethod
    def from_env(cls) -> Retry:
        """The policy, with BATCHLINE_STORAGE_RETRY_SECONDS overriding the time budget."""
        budget = os.environ.get("BATCHLINE_STORAGE_RETRY_SECONDS")
        return cls(seconds=float(budget)) if budget else cls()

    def call(self, fn: Callable[[], T], what: str, uri: str) -> T:
        """`fn()`, retried while it fails transiently; StorageUnavailable at the end."""
        started = time.monotonic()
        check_host(uri)
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except OSError as exc:
                wrong = misconfiguration(exc, what, uri)
                if wrong is not None:
                    raise wrong from exc
                if not is_transient(exc):
                    raise StorageUnavailable(describe(exc, what, uri)) from exc
                delay = random.uniform(0, min(self.maximum, self.initial * 2 ** attempt))  # noqa: S311
                spent = time.monotonic() - started
                if attempt == self.attempts or spent + delay > self.seconds:
                    raise StorageUnavailable(
                        f"{describe(exc, what, uri)} (gave up after {attempt} tries over "
                        f"{spent:.0f} s)") from exc
                log.warning("storage: %s %s failed (%s); retrying in %.1f s", what, uri,
                            _first_line(exc), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


def describe(exc: OSError, what: str, uri: str) -> str:
    """One paragraph: which URI, what went wrong, what to check."""
    if exc.errno in PERMANENT_ERRNOS:
        return (f"cannot {what} {uri}: {PERMANENT_ERRNOS[exc.errno]} ({exc.strerror}); "
                "free space, fix permissions or point --storage elsewhere, then resume the run")
    if is_transient(exc):
        return f"cannot {what} {uri}: {outage_advice()} ({_first_line(exc)})"
    return (f"cannot {what} {uri}: {_first_line(exc)}; check the storage URI and its "
            "credentials, then resume the run")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
