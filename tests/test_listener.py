"""`batchline listen` on moto's SQS: a put into a watched bucket starts one run, whatever the
queue does — duplicates, four listeners at once, a listener SIGKILLed mid-way, poison.

Listeners are real `batchline listen` processes; their runs are real detached launchers on
the local backend. Counts are the point, so most runs here are ingest only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import BATCHLINE, SPEC, eventually, fingerprints, free_port, run_cli
from s3_events import counts, drain, send, wire

from batchline import layout, storage
from batchline.claims import Claim, Outcome
from batchline.client import Client
from batchline.demo_data import generate
from batchline.events import overrides_for, parse_message, run_id_for
from batchline.manifest import RunManifest, RunState, list_runs
from batchline.spec import load_spec

pytestmark = pytest.mark.slow
FAST = {"num_boost_round": 20, "early_stopping_rounds": 5}


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("small")
    generate(600, out, seed=5)
    return (out / "encounters.csv").read_bytes()


def _spec(tmp_path: Path, bucket: str, ingest_only: bool = True) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    if ingest_only:
        data["stages"] = {"ingest": data["stages"]["ingest"]}
    else:
        data["stages"]["train"]["params"].update(FAST)
    data["trigger"] = {"bucket": bucket, "prefix": "in/", "suffix": ".csv"}
    path = tmp_path / f"spec-{bucket}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Listeners:
    """`batchline listen` processes, their output in files; stop() sends SIGTERM."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.procs = tmp_path, []  # type: ignore[var-annotated]

    def start(self, spec: Path, queue: str, root: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        n = len(self.procs)
        with open(self.tmp_path / f"listener-{n}.out", "w") as out, \
                open(self.tmp_path / f"listener-{n}.err", "w") as err:
            proc = subprocess.Popen([*BATCHLINE, "listen", str(spec), "--queue", queue,
                                     "--storage", root, "--wait-seconds", "1"],
                                    stdout=out, stderr=err, text=True,
                                    env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def log(self, n: int) -> str:
        return (self.tmp_path / f"listener-{n}.err").read_text()

    def stop(self) -> Counter[str]:
        """SIGTERM every listener still running; their summed counts (graceful exits)."""
        total: Counter[str] = Counter()
        for n, proc in enumerate(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, self.log(n)
                text = (self.tmp_path / f"listener-{n}.out").read_text().strip()
                total.update(json.loads(text.splitlines()[-1]))
        return total

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def listeners(tmp_path: Path) -> object:
    group = Listeners(tmp_path)
    yield group
    group.kill_all()


def _drained(queue: str) -> bool:
    return counts(queue) == (0, 0)


def _all_ended(root: str, expected: int, timeout: float = 90) -> list[str]:
    """Wait until `expected` runs exist under root and every one has ended; their ids."""
    client = Client(root)
    eventually(lambda: len(list_runs(root)[0]) >= expected, timeout, f"{expected} runs")
    ids = [m.run_id for m in list_runs(root)[0]]
    for run_id in ids:
        assert client.wait(run_id, timeout=timeout, poll_seconds=0.2).state is \
            RunState.SUCCEEDED, run_id
    return ids


def _one_run_from_a_put(path: str, tmp_path: Path, body: bytes, listeners: Listeners,
                        ingest_only: bool) -> tuple[Path, str, str]:
    """Wire a bucket to a queue by `path`, put one object, listen: the spec, the root and
    the one run (asserted: started once, the message deleted)."""
    wiring = wire(path)
    spec = _spec(tmp_path, wiring.bucket, ingest_only=ingest_only)
    root = str(tmp_path / f"store-{path}")
    boto3.client("s3").put_object(Bucket=wiring.bucket, Key="in/encounters.csv", Body=body)
    listeners.start(spec, wiring.queue_url, root)
    eventually(lambda: _drained(wiring.queue_url), 30, "the queue drained")
    (run_id,) = _all_ended(root, 1)
    source = Client(root).status(run_id).spec["stages"]["ingest"]["params"]["source"]
    assert source == f"s3://{wiring.bucket}/in/encounters.csv"
    assert counts(wiring.dlq_url) == (0, 0)
    return spec, root, run_id


def test_a_put_starts_one_run_matching_a_manual_run(tmp_path: Path, small_csv: bytes,
                                                    listeners: Listeners,
                                                    moto_server: str) -> None:
    # EventBridge (the recommended wiring) with the whole pipeline ...
    spec, root, run_id = _one_run_from_a_put("eventbridge", tmp_path, small_csv, listeners,
                                             ingest_only=False)
    # ... and a bucket notification straight to the queue, ingest only (the same bytes).
    _, direct_root, direct_id = _one_run_from_a_put("s3", tmp_path, small_csv, listeners,
                                                    ingest_only=True)
    done = listeners.stop()
    assert done == Counter({"started": 2, "ignored": 1})  # moto's s3:TestEvent: ignored
    # The same run id by hand (the model card names its run) under another root.
    source = Client(root).status(run_id).spec["stages"]["ingest"]["params"]["source"]
    manual = run_cli("run", str(spec), "--storage", str(tmp_path / "manual"), "--run-id", run_id,
                     "--set", f"stages.ingest.params.source={source}")
    assert manual.returncode == 0, manual.stderr
    expected = fingerprints(str(tmp_path / "manual"), run_id)
    assert fingerprints(root, run_id) == expected
    direct = fingerprints(direct_root, direct_id)
    assert direct == {k: v for k, v in expected.items() if k.startswith("ingest.")}


def test_one_message_delivered_ten_times_starts_one_run(tmp_path: Path, small_csv: bytes,
                                                        listeners: Listeners,
                                                        moto_server: str,
                                                        record_property: Any) -> None:
    source = wire("eventbridge")
    boto3.client("s3").put_object(Bucket=source.bucket, Key="in/once.csv", Body=small_csv)
    (body,) = drain(source.queue_url)  # the real EventBridge event moto delivered
    target = wire("s3")  # an empty queue (with its DLQ) for the copies
    drain(target.queue_url)  # moto's s3:TestEvent
    send(target.queue_url, body, times=10)
    spec = _spec(tmp_path, source.bucket)
    root = str(tmp_path / "store")
    for _ in range(2):
        listeners.start(spec, target.queue_url, root)
    eventually(lambda: _drained(target.queue_url), 60, "ten copies handled")
    (run_id,) = _all_ended(root, 1)
    assert run_id == run_id_for("readmission", parse_message(body)[0])
    done = listeners.stop()
    runs = len(list_runs(root)[0])
    record_property("counts", f"10 deliveries, 2 listeners: {runs} run; messages "
                              f"{dict(sorted(done.items()))}; queue (visible, in flight) "
                              f"{counts(target.queue_url)}, dead letters {counts(target.dlq_url)}")
    assert done["started"] == 1 and done["duplicate"] >= 9 and set(done) <= {"started",
                                                                            "duplicate"}
    assert counts(target.queue_url) == (0, 0) and counts(target.dlq_url) == (0, 0)


def test_four_listeners_twenty_objects_twenty_runs(tmp_path: Path, small_csv: bytes,
                                                   listeners: Listeners,
                                                   moto_server: str,
                                                   record_property: Any) -> None:
    # A visibility timeout long enough that a busy machine rarely sees a redelivery (one
    # is harmless: it finds the claim); storage local, so the 20 runs do not queue up on
    # the moto server (test_claims races claimers on S3).
    wiring = wire("s3", visibility=10)
    spec = _spec(tmp_path, wiring.bucket)
    root = str(tmp_path / "store")
    s3 = boto3.client("s3")
    for i in range(20):
        s3.put_object(Bucket=wiring.bucket, Key=f"in/part-{i:02d}.csv", Body=small_csv)
    # Every message twice over as well: at-least-once delivery, on top of four consumers.
    for body in drain(wiring.queue_url):
        send(wiring.queue_url, body, times=2)
    started = time.monotonic()
    for _ in range(4):
        listeners.start(spec, wiring.queue_url, root)
    eventually(lambda: _drained(wiring.queue_url), 120, "forty-two messages handled")
    ids = _all_ended(root, 20, timeout=120)
    done = listeners.stop()
    record_property("counts", f"4 listeners, 20 objects, 42 messages: {len(ids)} runs; "
                              f"messages {dict(sorted(done.items()))}; queue (visible, in "
                              f"flight) {counts(wiring.queue_url)}, dead letters "
                              f"{counts(wiring.dlq_url)}; {time.monotonic() - started:.0f} s")
    assert len(ids) == 20
    # Each of the 42 messages handled at least once (a redelivery adds a duplicate),
    # and exactly one start per object.
    assert done["started"] == 20 and done["ignored"] >= 2 and done["duplicate"] >= 20
    assert set(done) == {"started", "duplicate", "ignored"}
    assert counts(wiring.queue_url) == (0, 0) and counts(wiring.dlq_url) == (0, 0)
    claims = storage.list_dir(storage.join(root, "claims"))  # (+ the local lock files)
    assert sorted(c.removesuffix(".json") for c in claims if c.endswith(".json")) == \
        sorted(ids)


@pytest.mark.parametrize("where", ["claimed", "started"])
def test_a_listener_killed_mid_message_starts_nothing_twice(where: str, tmp_path: Path,
                                                           small_csv: bytes,
                                                           listeners: Listeners,
                                                           moto_server: str) -> None:
    wiring = wire("eventbridge")
    spec = _spec(tmp_path, wiring.bucket)
    root = str(tmp_path / "store")
    marker = tmp_path / "held"
    boto3.client("s3").put_object(Bucket=wiring.bucket, Key="in/k.csv", Body=small_csv)
    first = listeners.start(spec, wiring.queue_url, root,
                            env={"BATCHLINE_HOLD": f"{where}:{marker}"})
    eventually(marker.exists, 30, f"the listener held at {where!r}")
    first.kill()  # SIGKILL: no cleanup, the message not deleted
    first.wait()
    assert counts(wiring.queue_url) == (0, 1)  # in flight, to come back
    listeners.start(spec, wiring.queue_url, root)
    eventually(lambda: _drained(wiring.queue_url), 60, "the message handled again")
    (run_id,) = _all_ended(root, 1)
    done = listeners.stop()
    claim = json.loads(storage.read_text(storage.join(root, "claims", f"{run_id}.json")))
    assert claim["state"] == "started"
    if where == "claimed":  # claimed, never started: the second listener starts it
        assert done == Counter({"started": 1})
        assert claim["takeovers"][0]["from"]["pid"] == first.pid
        assert "took over" in listeners.log(1)
    else:  # started, not deleted: the second listener finds it started
        assert done == Counter({"duplicate": 1})
        assert claim["takeovers"] == []
    assert Client(root).status(run_id).state is RunState.SUCCEEDED


def test_poison_goes_to_the_dead_letter_queue_and_others_flow(tmp_path: Path,
                                                             small_csv: bytes,
                                                             listeners: Listeners,
                                                             moto_server: str,
                                                             record_property: Any) -> None:
    wiring = wire("s3", max_receives=2, visibility=1)
    drain(wiring.queue_url)  # moto's s3:TestEvent
    send(wiring.queue_url, "this is not an event")
    refused = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": wiring.bucket}, "object": {"key": "in/part%5B1%5D.csv",
                                                      "eTag": "e"}}}]}
    send(wiring.queue_url, json.dumps(refused))
    spec = _spec(tmp_path, wiring.bucket)
    root = str(tmp_path / "store")
    listeners.start(spec, wiring.queue_url, root)
    boto3.client("s3").put_object(Bucket=wiring.bucket, Key="in/good.csv", Body=small_csv)
    eventually(lambda: counts(wiring.dlq_url)[0] == 2, 60, "two messages dead-lettered")
    eventually(lambda: _drained(wiring.queue_url), 30, "the good message handled")
    assert len(_all_ended(root, 1)) == 1
    done = listeners.stop()
    record_property("counts", f"2 poison + 1 good message, maxReceiveCount 2: messages "
                              f"{dict(sorted(done.items()))}; dead letters "
                              f"{counts(wiring.dlq_url)}")
    assert done["started"] == 1 and done["poison"] == 4  # two messages, two receives each
    log = listeners.log(0)
    assert "poison message" in log and "not JSON" in log
    assert "glob character" in log and "s3://" in log and "part[1].csv" in log
    dead = sorted(drain(wiring.dlq_url))
    assert dead == sorted(["this is not an event", json.dumps(refused)])


def test_a_started_run_whose_launcher_died_is_resumed_by_a_later_delivery(
        tmp_path: Path, small_csv: bytes, listeners: Listeners, moto_server: str) -> None:
    wiring = wire("eventbridge")
    spec_path = _spec(tmp_path, wiring.bucket)
    boto3.client("s3").put_object(Bucket=wiring.bucket, Key="in/late.csv", Body=small_csv)
    (body,) = drain(wiring.queue_url)
    event = parse_message(body)[0]
    run_id, root = run_id_for("readmission", event), str(tmp_path / "store")
    # The run as a listener left it: claimed, started, its manifest pending; and then its
    # launcher died without a word (no lease, a heartbeat an hour old: `stale`).
    spec = load_spec(spec_path, overrides_for(load_spec(spec_path), event))
    manifest = RunManifest.new(root, run_id, spec.name, "local", spec.model_dump(mode="json"),
                               ["ingest"])
    manifest.created_at = manifest.updated_at = manifest.heartbeat_at = time.time() - 3600
    storage.write_text(layout.manifest_uri(root, run_id), manifest.model_dump_json())
    claim = Claim(root, run_id, event)
    assert claim.acquire() is Outcome.WON
    claim.started()
    send(wiring.queue_url, body)  # a late duplicate of its event
    listeners.start(spec_path, wiring.queue_url, root)
    eventually(lambda: _drained(wiring.queue_url), 30, "the late delivery handled")
    eventually(lambda: Client(root).status(run_id).shown_state() != "stale", 30,
               "a launcher on the run again")
    assert _all_ended(root, 1) == [run_id]  # resumed to its end: the same run, no other
    assert listeners.stop() == Counter({"resumed": 1})
    assert "had lost its launcher; resumed" in listeners.log(0)


def test_a_queue_that_does_not_answer_is_exit_3_and_a_wrong_one_exit_2(
        tmp_path: Path, s3_bucket: str) -> None:
    """SQS unreachable is an outage (exit 3: restart the listener later); a queue SQS says
    does not exist is the user's to fix (exit 2). Both name the queue."""
    spec = _spec(tmp_path, s3_bucket.removeprefix("s3://"))
    there = boto3.client("sqs").create_queue(QueueName="there")["QueueUrl"]
    wrong = there.replace("/there", "/not-there")
    refused = run_cli("listen", str(spec), "--queue", wrong)
    assert refused.returncode == 2, refused.stderr
    assert f"--queue {wrong}: cannot read the queue" in refused.stderr
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    silent = run_cli("listen", str(spec), "--queue", wrong,
                     env={"AWS_ENDPOINT_URL_SQS": down, "AWS_MAX_ATTEMPTS": "2"})
    assert silent.returncode == 3, silent.stderr
    assert f"--queue {wrong}: SQS did not answer" in silent.stderr
    assert "Traceback" not in silent.stderr + refused.stderr
