from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from batchline import storage
from batchline.errors import StorageError

STAMP = storage.Stamp(run_id="r", stage="s", cache_key="k", code_version="c")


def _table(n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(n), pa.int64()), "x": pa.array([1.5] * n)})


def test_commit_then_read_exact_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    with storage.DatasetWriter(uri, STAMP, rows_per_file=40) as w:
        w.write(_table(100))
        record = w.commit({"m": 1})
    assert [f.rows for f in record.files] == [40, 40, 20]
    assert storage.open_dataset(uri).count_rows() == 100
    again = storage.committed(uri)
    assert again.fingerprint == record.fingerprint
    assert again.metrics == {"m": 1}


def test_failed_writer_leaves_nothing_committed(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    with pytest.raises(RuntimeError), storage.DatasetWriter(uri, STAMP) as w:
        w.write(_table(10))
        raise RuntimeError("killed")
    assert storage.read_success(uri) is None
    assert not [p for p in Path(uri).rglob("*.parquet")]
    with pytest.raises(StorageError, match="not committed"):
        storage.open_dataset(uri)


def test_rerun_after_crash_keeps_exactly_one_copy(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    # A crashed attempt that never cleaned up (as after SIGKILL).
    stale = Path(uri) / "data-19700101T000000-dead"
    stale.mkdir(parents=True)
    (stale / "part-00000.parquet").write_bytes(b"half a file")
    with storage.DatasetWriter(uri, STAMP) as w:
        w.write(_table(7))
        w.commit()
    with storage.DatasetWriter(uri, STAMP) as w:  # and a rerun over a committed dataset
        w.write(_table(7))
        record = w.commit()
    prefixes = [p.name for p in Path(uri).iterdir() if p.name.startswith("data-")]
    assert prefixes == [record.files[0].path.split("/")[0]]
    assert storage.open_dataset(uri).count_rows() == 7


def test_same_rows_same_fingerprint(tmp_path: Path) -> None:
    records = []
    for name in ("a", "b"):
        with storage.DatasetWriter(str(tmp_path / name), STAMP) as w:
            w.write(_table(1000))
            records.append(w.commit())
    assert records[0].fingerprint == records[1].fingerprint
    assert records[0].files[0].path != records[1].files[0].path


def test_join_refuses_escapes() -> None:
    for bad in ("..", "a/../b", "/abs", "a b", ""):
        with pytest.raises(StorageError):
            storage.join("s3://bucket/root", bad)
    assert storage.join("s3://b/r/", "runs", "x") == "s3://b/r/runs/x"


def test_unsupported_scheme() -> None:
    with pytest.raises(StorageError, match="unsupported storage scheme"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(StorageError, match="invalid S3 URI"):
        storage.resolve("s3://")


def test_commit_union_of_shards(tmp_path: Path) -> None:
    uri = str(tmp_path / "preds")
    for i in range(3):
        with storage.DatasetWriter(storage.join(uri, f"shard-{i:05d}"), STAMP) as w:
            w.write(_table(i + 1))
            w.commit()
    union = storage.commit_union(uri, [storage.join(uri, f"shard-{i:05d}") for i in range(3)],
                                 STAMP)
    assert union.rows == 6
    assert storage.open_dataset(uri).count_rows() == 6


def test_s3_commit_protocol(s3_bucket: str) -> None:
    uri = f"{s3_bucket}/root/ds"
    with pytest.raises(RuntimeError), storage.DatasetWriter(uri, STAMP) as w:
        w.write(_table(5))
        raise RuntimeError("boom")
    assert storage.read_success(uri) is None
    with storage.DatasetWriter(uri, STAMP) as w:
        w.write(_table(5))
        w.write_file("model.txt", b"tree\n")
        record = w.commit()
    assert storage.open_dataset(uri).count_rows() == 5
    model = next(f for f in record.files if f.path.endswith("model.txt"))
    assert storage.read_bytes(storage.join(uri, model.path)) == b"tree\n"
    assert len(storage.list_dir(uri)) == 2  # one data prefix + _SUCCESS.json



class _Stopped(BaseException):
    """What the test's SIGTERM handler raises, as a launcher's does."""


def test_a_signal_during_an_s3_write_never_leaves_a_truncated_object(s3_bucket: str) -> None:
    """SIGTERM (a launcher told to stop, or Ctrl-C) raising while an object is written to
    S3: the object is whole or absent, never the empty upload that closing the stream
    on the way out would make."""
    import os
    import signal
    import threading

    data = b"{" + b"x" * 4000 + b"}"
    armed = threading.Event()  # raise only inside write_bytes, not in pytest's code
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if armed.is_set():
            armed.clear()  # once per write
            raise _Stopped

    def send() -> None:
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            stop.wait(0.002)  # a signal every 2 ms until the writes are done

    previous = signal.signal(signal.SIGTERM, handler)
    sender = threading.Thread(target=send, daemon=True)
    written, stopped = [], 0
    try:
        sender.start()
        for i in range(150):
            uri = f"{s3_bucket}/interrupted/{i}.json"
            written.append(uri)
            try:
                armed.set()
                storage.write_bytes(uri, data)
            except _Stopped:
                stopped += 1
            finally:
                armed.clear()
    finally:
        stop.set()
        sender.join()
        signal.signal(signal.SIGTERM, previous)
    assert stopped > 0  # the signals did land during writes
    for uri in written:
        assert not storage.exists(uri) or storage.read_bytes(uri) == data, uri
