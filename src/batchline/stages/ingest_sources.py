"""Ingest's sources: which files a source names, their format, and their text lines.

A source is a file, a folder or a glob over one folder's files. The format
comes from `stages.ingest.params.format`, or else from the extension; `.gz`,
`.bz2` and `.zst` files are decompressed while streaming. Text is read line by
line in bounded memory and handed on as UTF-8, so every later step can name a
physical line and no byte that is not text reaches the CSV parser.
"""

from __future__ import annotations

import codecs
import fnmatch
import io
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import pyarrow as pa
import pyarrow.fs as pafs

from batchline import storage
from batchline.errors import DataError
from batchline.stages.ingest_plain import Bulk

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\x28\xb5\x2f\xfd": "zstd"}
ENCODING_PATH = "stages.ingest.params.encoding"


@dataclass(frozen=True)
class Source:
    """One data file to read: where it is, its format and its compression."""

    uri: str
    format: str
    compression: str | None = None


def format_of(name: str) -> tuple[str | None, str | None]:
    """(format, compression) that a file name's extension implies, None where it says nothing."""
    lower = name.lower()
    compression = None
    for ext, codec in COMPRESSIONS.items():
        if lower.endswith(ext):
            compression, lower = codec, lower[: -len(ext)]
            break
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt, compression
    return None, compression


def list_sources(source: str, fmt: str | None) -> list[Source]:
    """The data files a source URI names, each with its format: a file, a folder or a glob."""
    parent, _, base = source.rstrip("/").rpartition("/")
    if any(ch in base for ch in "*?["):
        return _from_listing(source, parent or ".", fmt, pattern=base)
    fs, path = storage.resolve(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"source {source} does not exist; check stages.ingest.params.source")
    if info.type == pafs.FileType.Directory:
        return _from_listing(source, source, fmt, pattern="*")
    inferred, compression = format_of(info.base_name)
    chosen = fmt or inferred
    if chosen is None:
        raise DataError(f"cannot tell the format of {source} from its extension; name it .csv, "
                        ".csv.gz, .jsonl, .jsonl.gz or .parquet, or set "
                        "stages.ingest.params.format")
    return [Source(source, chosen, compression)]


def _from_listing(source: str, folder: str, fmt: str | None, pattern: str) -> list[Source]:
    fs, path = storage.resolve(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise DataError(f"source {source}: folder {folder} does not exist; check "
                        "stages.ingest.params.source")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    found: list[Source] = []
    for name in sorted(i.base_name for i in infos if i.type == pafs.FileType.File):
        if name.startswith((".", "_")) or not fnmatch.fnmatchcase(name, pattern):
            continue
        inferred, compression = format_of(name)
        if inferred is not None and (fmt is None or inferred == fmt):
            found.append(Source(storage.join(folder, name), inferred, compression))
    if not found:
        wanted = fmt or "csv, jsonl or parquet"
        raise DataError(f"source {source} matches no {wanted} files (.csv, .csv.gz, .jsonl, "
                        ".jsonl.gz, .parquet); check stages.ingest.params.source")
    formats = sorted({s.format for s in found})
    if len(formats) > 1:
        raise DataError(f"source {source} mixes formats {formats}; point it at one format's "
                        "files (a glob such as *.csv.gz) or set stages.ingest.params.format")
    return found


def open_stream(src: Source) -> pa.NativeFile:
    """Open a source for streaming, decompressing it; refuse files of another format."""
    fs, path = storage.resolve(src.uri)
    with fs.open_input_file(path) as head:
        magic = head.read(4)
    compression = src.compression or next(
        (codec for sig, codec in _MAGIC.items() if magic.startswith(sig)), None)
    if src.format != "parquet" and magic == b"PAR1":
        raise DataError(f"{src.uri} is a Parquet file, not {src.format}; name it .parquet or "
                        "set stages.ingest.params.format: parquet")
    if magic.startswith(b"PK\x03\x04"):
        raise DataError(f"{src.uri} is a zip archive; unzip it, or recompress it with gzip")
    try:
        return fs.open_input_stream(path, compression=compression)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{src.uri}: cannot open as {compression} ({exc})") from None


def _ascii_compatible(encoding: str) -> bool:
    """Whether newlines, quotes and delimiters are the ASCII bytes (so lines split on b'\\n')."""
    try:
        return "\n,;|\t\"'a".encode(encoding) == b"\n,;|\t\"'a"
    except (UnicodeError, LookupError):
        return False


def guess_encoding(sample: bytes) -> str:
    """A likely name for the encoding of bytes that are not UTF-8, for error messages."""
    if sample.count(b"\x00") > max(1, len(sample) // 20):
        return "binary"
    try:
        sample.decode("cp1252")
    except UnicodeDecodeError:
        return "latin-1"
    return "cp1252"


Line = tuple[int, bytes | None]


def text_lines(src: Source, stream: pa.NativeFile, encoding: str | None, max_bytes: int,
               ) -> Iterator[Line]:
    """(line number, UTF-8 bytes with their newline) of a text source, one at a time.

    A line longer than `max_bytes` is read through without being kept and comes
    as (number, None), so one giant field never holds more than that in memory.
    Bytes that are not text in the declared encoding stop the file with a
    DataError naming its line, byte offset and the encoding it likely is.
    """
    return cast(Iterator[Line], _text(src, stream, encoding, max_bytes, bulk=False))


def text_lines_in_bulk(src: Source, stream: pa.NativeFile, encoding: str | None,
                       max_bytes: int) -> Iterator[Line | Bulk]:
    """The lines of `text_lines`, but wherever the read buffer holds whole lines of valid
    text (no line longer than `max_bytes`), all of them at once as one Bulk.

    The first line always comes alone (it may carry a byte order mark). A line
    that is not valid text, or too long, still comes alone and fails or is
    skipped exactly as in `text_lines`.
    """
    return _text(src, stream, encoding, max_bytes, bulk=True)


def _text(src: Source, stream: pa.NativeFile, encoding: str | None, max_bytes: int,
          bulk: bool) -> Iterator[Line | Bulk]:
    name = codecs.lookup(encoding).name if encoding else "utf-8"
    if name == "utf-8" or _ascii_compatible(name):
        yield from _byte_lines(src, stream, name, max_bytes, bulk)
    else:
        yield from _wide_lines(src, stream, name, max_bytes)


def _byte_lines(src: Source, stream: pa.NativeFile, encoding: str, max_bytes: int,
                bulk: bool) -> Iterator[Line | Bulk]:
    reader = io.BufferedReader(stream, 1 << 20)
    offset = 0
    number = 0
    while True:
        whole = _whole_lines(reader, encoding, max_bytes) if bulk and number else 0
        if whole:
            data = reader.read(whole)
            offset += whole
            if encoding != "utf-8":
                data = data.decode(encoding).encode("utf-8")
            yield Bulk(number + 1, data)
            number += data.count(b"\n")
            continue
        raw = reader.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        start = offset
        offset += len(raw)
        if number == 1:
            raw = _check_bom(src, raw, encoding)
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the giant line
                raw = reader.readline(1 << 20)
                offset += len(raw)
            yield number, None
            continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DataError(_not_text(src, raw, number, start + exc.start, encoding)) from None
        yield number, raw if encoding == "utf-8" else text.encode("utf-8")


def _whole_lines(reader: io.BufferedReader, encoding: str, max_bytes: int) -> int:
    """How many of the buffered bytes are whole lines of valid text, at most max_bytes."""
    buffered = reader.peek(1)  # what the buffer holds; one read only if it is empty
    size = buffered.rfind(b"\n", 0, max_bytes) + 1
    if size:
        try:
            str(memoryview(buffered)[:size], encoding)
        except UnicodeDecodeError as exc:
            # Up to the line before the bad bytes; that line then fails on its own.
            size = buffered.rfind(b"\n", 0, exc.start) + 1
    return size


def _check_bom(src: Source, raw: bytes, encoding: str) -> bytes:
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):]
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and encoding == "utf-8":
        raise DataError(f"{src.uri} starts with a UTF-16 byte order mark; set "
                        f"{ENCODING_PATH}: utf-16")
    return raw


def _not_text(src: Source, raw: bytes, number: int, offset: int, encoding: str) -> str:
    guess = guess_encoding(raw)
    label = "UTF-8" if encoding == "utf-8" else encoding
    where = f"{src.uri}: line {number}, byte offset {offset}"
    if guess == "binary":
        return (f"{where}: binary data, not {label} text; point "
                "stages.ingest.params.source at text files, or set format: parquet for Parquet")
    return (f"{where}: not {label} text; it looks like {guess}: set "
            f"{ENCODING_PATH}: {guess}, or re-export the file as UTF-8")


def _wide_lines(src: Source, stream: pa.NativeFile, encoding: str, max_bytes: int,
                ) -> Iterator[Line]:
    # UTF-16 and friends: newlines are not single bytes, so decode first.
    text = io.TextIOWrapper(io.BufferedReader(stream, 1 << 20),
                            encoding=encoding, newline="\n")
    number = 0
    while True:
        try:
            line = text.readline(max_bytes + 1)
        except UnicodeDecodeError as exc:
            raise DataError(f"{src.uri}: near line {number + 1}: not valid {encoding} text "
                            f"({exc.reason}); check {ENCODING_PATH}") from None
        if not line:
            return
        number += 1
        if number == 1:
            line = line.lstrip("\ufeff")
        if len(line) > max_bytes and not line.endswith("\n"):
            while line and not line.endswith("\n"):
                line = text.readline(1 << 20)
            yield number, None
            continue
        yield number, line.encode("utf-8")


@dataclass
class ReadReport:
    """What reading one file saw besides its rows: counts, skipped records, ignored columns.

    `rows_read` counts every record the reader met, including the ones it
    skipped, so that ingest can check rows read = committed + quarantined.
    """

    uri: str
    rows_read: int = 0
    skipped: list[tuple[int, str, str | None]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def skip(self, line: int, reason: str, record: str | None) -> None:
        """Quarantine a record the reader could not turn into a row."""
        self.skipped.append((line, reason, record))


def check_header(uri: str, names: list[str], columns: Mapping[str, str],
                 report: ReadReport) -> None:
    """Refuse duplicated or missing column names; note the undeclared ones as ignored."""
    counts = Counter(names)
    duplicated = sorted(n for n, c in counts.items() if c > 1)
    if duplicated:
        raise DataError(f"{uri}: the header names {duplicated} more than once; rename the "
                        "columns so each name is unique")
    missing = [c for c in columns if c not in counts]
    if missing:
        raise DataError(f"{uri}: missing columns {missing}; the file has {names}. Fix the "
                        "file or stages.ingest.params.columns")
    report.ignored = [n for n in names if n not in columns]
