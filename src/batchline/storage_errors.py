"""Which object-store failures are configuration and which are an outage.

Configuration (exit 2, never retried, the user must change something): the
bucket does not exist, no credentials or refused ones, access denied, the
endpoint's host name is unknown, the bucket lives in another region.
Outage (exit 3, retried first, `resume` heals the run): throttling, 5xx,
connection refused or reset, timeouts. Both messages are one paragraph naming
the URI, the endpoint and what to check; never a credential's value.

An unknown host name is found by `check_host` before the first request to
that host in a process: the S3 client would spend about 18 s of its own
retries on it, and a name that resolved once and fails later is a DNS
hiccup, an outage, so error texts about resolving are not configuration.
"""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlparse

import pyarrow.fs as pafs

from batchline.errors import StorageMisconfigured

# Pattern in pyarrow's (AWS C++ SDK) or boto3's error text -> what to check.
_CONFIGURATION: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"NO_SUCH_BUCKET|NoSuchBucket|specified bucket does not exist"),
     "the bucket {bucket} does not exist there; check the bucket name in the storage URI "
     "(--storage, the spec's storage, BATCHLINE_STORAGE) or create the bucket"),
    (re.compile(r"Unable to locate credentials|NoCredentials|No credentials|"
                r"missing credentials", re.IGNORECASE),
     "no credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
     "AWS_PROFILE, or run where a role provides them"),
    (re.compile(r"INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|"
                r"SignatureDoesNotMatch|InvalidToken|EXPIRED_TOKEN|ExpiredToken"),
     "the credentials were refused; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
     "AWS_SESSION_TOKEN or AWS_PROFILE"),
    (re.compile(r"ACCESS_DENIED|AccessDenied|HTTP status 403|Forbidden"),
     "access was denied; check that these credentials may read and write the bucket "
     "{bucket} (its policy, the role's permissions)"),
    (re.compile(r"HTTP status 301|PermanentRedirect|AuthorizationHeaderMalformed|"
                r"IllegalLocationConstraint"),
     "the bucket {bucket} is in another region; set AWS_REGION to the bucket's region"),
]
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
_RESOLVED: set[str] = set()
_BUCKETS: set[str] = set()


def endpoint() -> tuple[str, str]:
    """The S3 endpoint in use and where that comes from, for messages."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var], var
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return f"https://s3.{region}.amazonaws.com", f"AWS's own for region {region}; no " \
        "AWS_ENDPOINT_URL is set"


def _bucket(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0]


def _named_bucket(uri: str) -> str:
    return repr(_bucket(uri)) if uri.startswith("s3://") else "(see the storage URI)"


def misconfiguration(exc: BaseException, what: str, uri: str) -> StorageMisconfigured | None:
    """A StorageMisconfigured for `exc` if no retry can heal it, else None."""
    text = str(exc)
    for pattern, advice in _CONFIGURATION:
        if pattern.search(text):
            advice = advice.format(bucket=_named_bucket(uri))
            return StorageMisconfigured(_paragraph(what, uri, advice))
    return None


def _paragraph(what: str, uri: str, advice: str) -> str:
    url, source = endpoint()
    return f"cannot {what} {uri} at endpoint {url} ({source}): {advice}."


def outage_advice() -> str:
    """What to check when the store kept failing: its endpoint, named."""
    url, source = endpoint()
    return (f"the object store at {url} ({source}) kept failing; check that it is up and "
            "reachable from here, then resume the run")


def check_host(uri: str) -> None:
    """Fail at once, naming the endpoint, if its host name does not exist.

    Only "no such name" counts (a temporary DNS failure is left to the
    retries), once per host and process; behind a proxy the proxy resolves
    names, so nothing is checked.
    """
    if not uri.startswith("s3://") or any(os.environ.get(v) for v in _PROXY_VARS):
        return
    url, _ = endpoint()
    host = urlparse(url).hostname or ""
    if not os.environ.get("AWS_ENDPOINT_URL_S3") and not os.environ.get("AWS_ENDPOINT_URL"):
        # AWS addresses a bucket as its own host name (virtual-hosted style).
        host = f"{_bucket(uri)}.{host}"
    if not host or host in _RESOLVED:
        return
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            raise StorageMisconfigured(_paragraph(
                "reach", uri, f"the host name {host!r} does not exist (DNS); check "
                "AWS_ENDPOINT_URL, or AWS_REGION and the bucket name for AWS itself, and the "
                "network's DNS")) from None
        return
    _RESOLVED.add(host)


def check_bucket(fs: pafs.FileSystem, uri: str) -> None:
    """On a "not found", tell a missing bucket (configuration) from a missing key.

    pyarrow reports both as FileNotFoundError; one HeadBucket per bucket and
    process, only on that path, tells them apart.
    """
    if not uri.startswith("s3://") or _bucket(uri) in _BUCKETS:
        return
    if fs.get_file_info(_bucket(uri)).type == pafs.FileType.NotFound:
        advice = _CONFIGURATION[0][1].format(bucket=_named_bucket(uri))
        raise StorageMisconfigured(_paragraph("read", uri, advice))
    _BUCKETS.add(_bucket(uri))
