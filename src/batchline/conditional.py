"""One small object written only under a condition: the primitive behind a run's lease,
an event's claim and a model registry's aliases.

`create` succeeds only if the object is absent (S3 `If-None-Match: *`, a local
exclusive create); `replace` and `delete` only if it is still at the version
read (S3 `If-Match` on the ETag, a local file lock around a compare). Two
writers racing on one object therefore always end with one winner.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import secrets
from typing import Any

from batchline import storage
from batchline.errors import BatchlineError, StorageMisconfigured, StorageUnavailable
from batchline.retry import Retry
from batchline.storage_errors import misconfiguration, outage_advice

# S3's answers to a failed condition (412, or 409 when two conditional writes race).
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412")


class ConditionalObject(abc.ABC):
    """Conditional create/replace/delete of one small object; a tag names a version."""

    @abc.abstractmethod
    def create(self, data: bytes) -> bool:
        """Write `data` only if the object does not exist; False if it does."""

    @abc.abstractmethod
    def read(self) -> tuple[bytes, str] | None:
        """The content and its tag, or None if absent."""

    @abc.abstractmethod
    def replace(self, data: bytes, tag: str) -> bool:
        """Write `data` only if the object is still at `tag`; False otherwise."""

    @abc.abstractmethod
    def delete(self, tag: str) -> None:
        """Delete the object if it is still at `tag`."""


class LocalObject(ConditionalObject):
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = f"{path}.lock"

    def create(self, data: bytes) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # Written aside, then linked into place: the link fails if the object
        # exists, and a reader never sees it half written.
        tmp = f"{self.path}.new-{os.getpid()}-{secrets.token_hex(4)}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: an exclusive create instead
            return self._create_exclusive(data)
        finally:
            os.unlink(tmp)
        return True

    def _create_exclusive(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def _locked(self) -> Any:
        with open(self.lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def replace(self, data: bytes, tag: str) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current[1] != tag:
                return False
            storage.write_bytes(self.path, data)
            return True

    def delete(self, tag: str) -> None:
        with self._locked():
            current = self.read()
            if current is not None and current[1] == tag:
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.unlink(self.lock)


class S3Object(ConditionalObject):
    def __init__(self, uri: str) -> None:
        try:
            import boto3
        except ImportError as exc:
            raise BatchlineError("runs, event claims and model aliases on s3:// storage are "
                                 "written with conditional writes, which need boto3: "
                                 "pip install 'batchline[aws]'") from exc
        bucket, _, key = uri[len("s3://"):].partition("/")
        self.bucket, self.key = bucket, key
        self.client = boto3.client("s3")

    def _code(self, exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def create(self, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
        except Exception as exc:
            if self._code(exc) in _CONDITION_FAILED:
                return False
            raise
        return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return got["Body"].read(), str(got["ETag"])

    def replace(self, data: bytes, tag: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfMatch=tag)
        except Exception as exc:
            if self._code(exc) in (*_CONDITION_FAILED, "NoSuchKey", "404"):
                return False
            raise
        return True

    def delete(self, tag: str) -> None:
        current = self.read()
        if current is not None and current[1] == tag:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def conditional_object(uri: str) -> ConditionalObject:
    """The conditional object at a storage URI (s3:// or a local path)."""
    if uri.startswith("s3://"):
        return S3Object(uri)
    return LocalObject(storage.resolve(uri)[1])


def guarded_call(retry: Retry, fn: Any, what: str, uri: str, subject: str) -> Any:
    """`fn()` on a conditional object, retried while storage fails transiently; a failure
    that outlasts the retries is StorageUnavailable, a wrong setting StorageMisconfigured,
    each naming `subject` ("the run's lease") and the URI."""
    try:
        return retry.call(fn, what, uri)
    except (StorageUnavailable, StorageMisconfigured):
        raise
    except Exception as exc:  # boto3 errors that outlasted its own retries
        wrong = misconfiguration(exc, f"{what} {subject}", uri)
        if wrong is not None:
            raise wrong from exc
        raise StorageUnavailable(f"cannot {what} {subject} {uri}: {outage_advice()} "
                                 f"({exc})") from exc
