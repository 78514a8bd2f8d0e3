"""One writer per run: the lease on local folders and on S3 (moto over HTTP)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchline import storage
from batchline.lease import Lease, LeaseLost, RunLocked


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _roots(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"{bucket}/root"


@pytest.fixture(params=["local", "s3"])
def root(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return _roots(tmp_path, request)


def test_a_second_launcher_is_refused_naming_the_holder(root: str) -> None:
    first = Lease(root, "r1")
    first.acquire()
    with pytest.raises(RunLocked) as err:
        Lease(root, "r1").acquire()
    assert f"launcher pid {first.holder.pid} on {socket.gethostname()}" in str(err.value)  # type: ignore[union-attr]
    first.release()
    second = Lease(root, "r1")
    second.acquire()  # released: free again
    second.release()
    assert not storage.exists(first.uri)


def test_a_gone_holder_is_taken_over(root: str) -> None:
    dead = {"token": "x", "host": socket.gethostname(), "pid": _dead_pid(),
            "acquired_at": time.time(), "renewed_at": time.time(), "ttl": 600.0}
    storage.write_text(Lease(root, "r1").uri, json.dumps(dead))
    lease = Lease(root, "r1")
    assert lease.acquire().pid != dead["pid"]  # its process is gone: taken over at once
    lease.release()
    expired = {**dead, "host": "elsewhere", "pid": 1, "renewed_at": time.time() - 120,
               "ttl": 60.0}
    storage.write_text(lease.uri, json.dumps(expired))
    lease = Lease(root, "r1")
    lease.acquire()  # another host's holder stopped renewing two TTLs ago
    lease.release()
    live = {**expired, "renewed_at": time.time()}
    storage.write_text(lease.uri, json.dumps(live))
    with pytest.raises(RunLocked, match="launcher pid 1 on elsewhere"):
        Lease(root, "r1").acquire()


def test_a_launcher_whose_lease_was_taken_finds_out(root: str) -> None:
    paused = Lease(root, "r1", ttl=600)
    paused.acquire()
    holder = json.loads(storage.read_text(paused.uri))
    storage.write_text(paused.uri, json.dumps({**holder, "renewed_at": 0}))  # as if paused
    taker = Lease(root, "r1")
    taker.acquire()
    with pytest.raises(LeaseLost):
        paused.renew()
    with pytest.raises(LeaseLost, match="another launcher took over this run"):
        paused.check()
    paused.release()  # must not delete the taker's lease
    assert json.loads(storage.read_text(taker.uri))["token"] == taker.token
    taker.release()


def test_a_replacement_launcher_waits_for_its_predecessors_lease(root: str) -> None:
    # A launcher pod evicted without releasing: another host's lease, renewed just now.
    gone_soon = {"token": "x", "host": "evicted-pod", "pid": 1, "acquired_at": time.time(),
                 "renewed_at": time.time(), "ttl": 1.0}
    storage.write_text(Lease(root, "r1").uri, json.dumps(gone_soon))
    with pytest.raises(RunLocked, match="launcher pid 1 on evicted-pod"):
        Lease(root, "r1").acquire()  # no wait: refused at once, as before
    started = time.monotonic()
    lease = Lease(root, "r1")
    assert lease.acquire(wait=10).host == socket.gethostname()
    assert 0.5 < time.monotonic() - started < 5  # waited for the expiry, not the whole wait
    lease.release()
    live = Lease(root, "r2")
    live.acquire()  # renewing: a wait ends in RunLocked all the same
    with pytest.raises(RunLocked):
        Lease(root, "r2").acquire(wait=1.5)
    live.release()
