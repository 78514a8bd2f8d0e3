"""Storage: URIs onto pyarrow filesystems, and the commit protocol.

A dataset is a folder URI. A writer puts its files under a fresh
`data-<token>/` prefix inside it and, only when every file is closed,
publishes `_SUCCESS.json` listing exactly those files with their row counts
and sha256. Readers go through `_SUCCESS.json` and never list the folder, so
a stage killed at any moment leaves nothing a reader takes as committed, and
a rerun publishes exactly one copy. Parts are not renamed into place because
S3 has no rename (a copy would double the I/O); instead the success record
names the prefix, and stale prefixes of killed attempts are deleted after the
next commit.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

if TYPE_CHECKING:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

from batchline import interrupts
from batchline.errors import StorageError, StorageUnavailable
from batchline.retry import Retry
from batchline.storage_errors import check_bucket

log = logging.getLogger(__name__)
T = TypeVar("T")
SUCCESS = "_SUCCESS.json"
_PREFIX_TIME = "%Y%m%dT%H%M%S"
ROWS_PER_FILE = 1_000_000
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=-]*")


def _s3_filesystem() -> pafs.S3FileSystem:
    # AWS_ENDPOINT_URL is the SDK-wide override; honouring it here is what
    # makes moto, MinIO and on-prem object stores work without code changes.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # The AWS SDK's standard retries (backoff with jitter on throttling, 5xx
    # and connection errors) for every request, stages' bulk reads included.
    attempts = int(os.environ.get("BATCHLINE_S3_MAX_ATTEMPTS", "6"))
    kwargs: dict[str, Any] = {"region": region,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(attempts)}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        kwargs["allow_bucket_creation"] = True
    return pafs.S3FileSystem(**kwargs)


_FS_CACHE: dict[str, pafs.FileSystem] = {}


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map a URI (`s3://bucket/key`, `file:///abs`, or a local path) to (fs, path)."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):].rstrip("/")
        if not rest or rest.startswith("/"):
            raise StorageError(f"invalid S3 URI {uri!r}; expected s3://bucket/prefix")
        if "s3" not in _FS_CACHE:
            _FS_CACHE["s3"] = _s3_filesystem()
        return _FS_CACHE["s3"], rest
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"unsupported storage scheme {scheme!r} in {uri!r}; "
                           "use s3://bucket/prefix or a local folder")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """Join URI segments, refusing anything that could escape `base`."""
    for part in parts:
        for segment in part.split("/"):
            if not _SEGMENT.fullmatch(segment) or segment in {".", ".."}:
                raise StorageError(f"invalid path segment {segment!r} in {part!r}; use letters, "
                                   "digits, '.', '_', '-' and '='")
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return _retry().call(lambda: fs.get_file_info(path).type != pafs.FileType.NotFound,
                         "look up", uri)


def is_file(uri: str) -> bool:
    """Whether `uri` is a file (not missing, not a folder)."""
    fs, path = resolve(uri)
    return _retry().call(lambda: fs.get_file_info(path).type == pafs.FileType.File,
                         "look up", uri)


def retrying(fn: Callable[[], T], what: str, uri: str) -> T:
    """Call `fn` (filesystem calls about `uri`) under the storage retry policy: a
    transient failure is retried, one that lasts becomes StorageUnavailable."""
    return _retry().call(fn, what, uri)


def _retry() -> Retry:
    return Retry.from_env()


def read_bytes(uri: str) -> bytes:
    """A whole (small) object; StorageError if it does not exist."""
    fs, path = resolve(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    try:
        return _retry().call(read, "read", uri)
    except StorageUnavailable as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            check_bucket(fs, uri)
            raise StorageError(f"{uri} does not exist") from None
        raise


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object so that readers see the old or the new content, never half.

    S3 PUTs are atomic by themselves; on a local disk we write a temporary
    file beside the target and rename it over, and remove the temporary file
    whatever fails.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        _retry().call(lambda: _write_local(path, data), "write", uri)
        return

    def put() -> None:
        # An S3 stream uploads what it holds when it is closed, and an exception
        # leaving the block closes it: a Ctrl-C or SIGTERM landing between open
        # and write would commit an empty object (a manifest truncated to
        # nothing). Held signals are acted on once the object is whole.
        with interrupts.held(), fs.open_output_stream(path) as stream:
            stream.write(data)
    _retry().call(put, "write", uri)


def _write_local(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete_file(uri: str) -> None:
    """Remove one object; nothing happens if it is already gone."""
    fs, path = resolve(uri)

    def delete() -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)
    _retry().call(delete, "delete", uri)


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)

    def delete() -> None:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
    _retry().call(delete, "delete", uri)


def list_dir(uri: str) -> list[str]:
    """Names directly under a folder URI (empty if it does not exist)."""
    fs, path = resolve(uri)

    def names() -> list[str]:
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(info.base_name for info in infos)
    found = _retry().call(names, "list", uri)
    if not found:
        check_bucket(fs, uri)  # an empty listing of a bucket that does not exist
    return found


def schema_hash(schema: pa.Schema) -> str:
    """A hash of field names and types, blind to metadata."""
    text = ",".join(f"{f.name}:{f.type}:{f.nullable}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stamp:
    """Who committed a dataset and from what: written into every `_SUCCESS.json`.

    The launcher reuses a dataset only when its stamp's cache key matches, so
    a writer cannot be opened without one and no stage can forget it.
    """

    run_id: str
    stage: str
    cache_key: str
    code_version: str = ""
    shard: int | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # input name -> fingerprint

    def meta(self, **extra: Any) -> dict[str, Any]:
        return {**asdict(self), **extra}


@dataclass(frozen=True)
class CommittedFile:
    path: str  # relative to the dataset URI
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SuccessRecord:
    """The content of `_SUCCESS.json`: what a committed dataset holds."""

    files: list[CommittedFile]
    rows: int
    schema_hash: str
    schema: list[list[str]]
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    committed_at: float = 0.0

    @property
    def fingerprint(self) -> str:
        """A hash of the committed bytes, independent of where or when they were written."""
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path.rsplit("/", 1)[-1]):
            digest.update(f"{f.path.rsplit('/', 1)[-1]}:{f.sha256}\n".encode())
        return digest.hexdigest()

    def to_json(self) -> str:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SuccessRecord:
        data = json.loads(text)
        data.pop("fingerprint", None)
        data["files"] = [CommittedFile(**f) for f in data["files"]]
        return cls(**data)


def read_success(uri: str) -> SuccessRecord | None:
    """The success record of a dataset, or None if it was never committed.

    An unreadable record (truncated, edited) counts as not committed, with a
    warning naming it, so the stage that writes it runs again.
    """
    target = join(uri, SUCCESS)
    try:
        text = read_text(target)
    except StorageError:
        return None
    try:
        return SuccessRecord.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s is unreadable (%s); the dataset counts as not committed", target,
                    type(exc).__name__)
        return None


def verify(uri: str, record: SuccessRecord, checksums: bool = False) -> list[str]:
    """What is wrong with a committed dataset's files: missing, resized or (with
    `checksums`) changed since the commit. Empty when every listed file is intact."""
    fs, base = resolve(uri)
    problems = []
    for f in record.files:
        path = f"{base}/{f.path}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            problems.append(f"{join(uri, f.path)} is missing")
        elif info.size != f.bytes:
            problems.append(f"{join(uri, f.path)} has {info.size} bytes, {f.bytes} were committed")
        elif checksums and sha256_of(fs, path) != f.sha256:
            problems.append(f"{join(uri, f.path)} does not match its committed sha256")
    return problems


def sha256_of(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def committed(uri: str) -> SuccessRecord:
    """The success record of a dataset; a clear error if it is not committed."""
    record = read_success(uri)
    if record is None:
        raise StorageError(f"dataset {uri} is not committed (no {SUCCESS}); run the stage that "
                           "writes it first")
    return record


def file_uris(uri: str, record: SuccessRecord | None = None) -> list[str]:
    record = record or committed(uri)
    return [join(uri, f.path) for f in record.files]


def open_dataset(uri: str) -> ds.Dataset:
    """A pyarrow dataset over exactly the committed files of `uri`."""
    record = committed(uri)
    fs, _ = resolve(uri)
    paths = [resolve(u)[1] for u in file_uris(uri, record) if u.endswith(".parquet")]
    if not paths:
        raise StorageError(f"dataset {uri} has no Parquet files")
    # Imported here: the launcher (and an unchanged rerun) only reads and writes
    # small JSON files, and pyarrow's dataset and Parquet modules cost it ~0.3 s.
    import pyarrow.dataset as ds

    return ds.dataset(paths, format="parquet", filesystem=fs)


class _HashingSink:
    """A write-only file object that hashes bytes on their way to storage."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self._size = 0
        self.closed = False

    def write(self, data: bytes | memoryview | pa.Buffer) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._stream.write(view)
        self._size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self.closed = True

    def writable(self) -> bool:
        return True

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size


class DatasetWriter:
    """Writes one dataset under a private prefix and commits it atomically.

    Use as a context manager: leaving the block with an exception abandons the
    attempt (its prefix is removed where possible, and in any case never
    listed in a success record).
    """

    def __init__(self, uri: str, stamp: Stamp, schema: pa.Schema | None = None,
                 rows_per_file: int = ROWS_PER_FILE, stale_before: float | None = None,
                 row_group_rows: int | None = None) -> None:
        self.uri = uri
        # None: Parquet's default (each written batch a row group, up to its limit)
        self.row_group_rows = row_group_rows
        self.stamp = stamp
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.stale_before = stale_before
        self.prefix = f"data-{time.strftime(_PREFIX_TIME, time.gmtime())}-{secrets.token_hex(4)}"
        self._fs, self._base = resolve(uri)
        self._files: list[CommittedFile] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink: _HashingSink | None = None
        self._rows_in_file = 0
        self._name = ""
        self._committed = False

    def __enter__(self) -> DatasetWriter:
        if isinstance(self._fs, pafs.LocalFileSystem):
            self._fs.create_dir(f"{self._base}/{self.prefix}", recursive=True)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._committed:
            self._close_file()
            delete_dir(join(self.uri, self.prefix))

    def _open_file(self) -> None:
        assert self.schema is not None
        self._name = f"{self.prefix}/part-{len(self._files):05d}.parquet"
        stream = self._fs.open_output_stream(f"{self._base}/{self._name}")
        self._sink = _HashingSink(stream)
        import pyarrow.parquet as pq  # see open_dataset

        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._rows_in_file = 0

    def _close_file(self) -> None:
        if self._writer is None or self._sink is None:
            return
        self._writer.close()
        self._sink.close()
        self._files.append(CommittedFile(self._name, self._rows_in_file, self._sink.size,
                                         self._sink.digest))
        self._writer = None
        self._sink = None

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows; files roll over every `rows_per_file` rows."""
        if self.schema is None:
            self.schema = data.schema
        if data.schema != self.schema:
            data = data.cast(self.schema)
        offset = 0
        while offset < data.num_rows:
            if self._writer is None:
                self._open_file()
            assert self._writer is not None
            take = min(data.num_rows - offset, self.rows_per_file - self._rows_in_file)
            chunk = data.slice(offset, take)
            if isinstance(chunk, pa.RecordBatch):
                self._writer.write_batch(chunk, row_group_size=self.row_group_rows)
            else:
                self._writer.write_table(chunk, row_group_size=self.row_group_rows)
            self._rows_in_file += take
            offset += take
            if self._rows_in_file >= self.rows_per_file:
                self._close_file()

    def write_file(self, name: str, data: bytes) -> CommittedFile:
        """Add a non-tabular file (a model, a report) to the dataset."""
        rel = f"{self.prefix}/{name}"
        join(self.uri, name)  # validates the name
        sink = _HashingSink(self._fs.open_output_stream(f"{self._base}/{rel}"))
        sink.write(data)
        sink.close()
        entry = CommittedFile(rel, 0, sink.size, sink.digest)
        self._files.append(entry)
        return entry

    def commit(self, metrics: dict[str, Any] | None = None) -> SuccessRecord:
        """Close the last file and publish `_SUCCESS.json` with the stamp; returns the record."""
        self._close_file()
        if self.schema is not None and not any(f.path.endswith(".parquet") for f in self._files):
            # An empty dataset still gets one (empty) file so readers see its schema.
            self._open_file()
            self._close_file()
        schema = self.schema or pa.schema([])
        record = SuccessRecord(
            files=list(self._files),
            rows=sum(f.rows for f in self._files),
            schema_hash=schema_hash(schema),
            schema=[[f.name, str(f.type)] for f in schema],
            metrics=metrics or {},
            meta=self.stamp.meta(),
            committed_at=time.time(),
        )
        write_text(join(self.uri, SUCCESS), record.to_json())
        self._committed = True
        remove_stale_prefixes(self.uri, keep={self.prefix}, before=self.stale_before)
        return record


def remove_stale_prefixes(uri: str, keep: Iterable[str], before: float | None = None) -> None:
    """Delete `data-*` folders of abandoned attempts (never the committed one).

    With `before`, only folders stamped earlier than that (UTC, to the second)
    go: a writer that started since may still be live.
    """
    keep = set(keep)
    for name in list_dir(uri):
        if not name.startswith("data-") or name in keep:
            continue
        if before is not None and not _prefix_time(name) < before:
            continue
        delete_dir(join(uri, name))


def _prefix_time(name: str) -> float:
    """When a `data-<UTC time>-<token>` folder was started; +inf if unreadable."""
    try:
        return float(calendar.timegm(time.strptime(name.split("-")[1], _PREFIX_TIME)))
    except (IndexError, ValueError):
        return float("inf")


def commit_union(uri: str, parts: list[str], stamp: Stamp,
                 metrics: dict[str, Any] | None = None) -> SuccessRecord:
    """Commit a dataset made of other committed datasets under it (shards).

    Each part must be a committed dataset below `uri`; the union's record
    lists their files, so the shards' bytes are published once, not copied.
    """
    files: list[CommittedFile] = []
    records = []
    for part in parts:
        if not part.startswith(uri.rstrip("/") + "/"):
            raise StorageError(f"shard {part} is not under {uri}")
        record = committed(part)
        records.append(record)
        rel = part[len(uri.rstrip("/")) + 1:]
        files.extend(CommittedFile(f"{rel}/{f.path}", f.rows, f.bytes, f.sha256)
                     for f in record.files)
    hashes = {r.schema_hash for r in records}
    if len(hashes) > 1:
        raise StorageError(f"shards of {uri} disagree on their schema: {sorted(hashes)}")
    union = SuccessRecord(
        files=files,
        rows=sum(f.rows for f in files),
        schema_hash=records[0].schema_hash if records else "",
        schema=records[0].schema if records else [],
        metrics=metrics or {},
        meta=stamp.meta(shards=len(parts)),
        committed_at=time.time(),
    )
    write_text(join(uri, SUCCESS), union.to_json())
    return union
