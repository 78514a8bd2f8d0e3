"""Event payloads as AWS documents them and as moto's S3 delivers them; run ids from object
versions; the spec's `trigger:` section."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from conftest import SPEC
from s3_events import drain, wire

from batchline.errors import SpecError
from batchline.events import (
    EventError,
    ObjectEvent,
    overrides_for,
    parse_event,
    parse_message,
    refusal,
    run_id_for,
)
from batchline.layout import RUN_ID
from batchline.spec import load_spec

# The shapes of https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-
# structure.html and .../ev-events.html, written out by hand.
AWS_NOTIFICATION = {"Records": [{
    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-west-2",
    "eventTime": "1970-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
    "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"},
    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
    "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8"},
    "s3": {"s3SchemaVersion": "1.0", "configurationId": "testConfigRule",
           "bucket": {"name": "hospital-drops", "ownerIdentity": {"principalId": "A3NL1KOZZ"},
                      "arn": "arn:aws:s3:::hospital-drops"},
           "object": {"key": "encounters/2026-11/red+flower%3D1.csv", "size": 1024,
                      "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                      "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                      "sequencer": "0055AED6DCD90281E5"}}}]}
AWS_TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent",
                  "Time": "2014-10-13T15:57:02.089Z", "Bucket": "hospital-drops",
                  "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3e"}
AWS_EVENTBRIDGE = {
    "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created", "source": "aws.s3", "account": "111122223333",
    "time": "2021-11-12T00:00:00Z", "region": "ca-central-1",
    "resources": ["arn:aws:s3:::hospital-drops"],
    "detail": {"version": "0", "bucket": {"name": "hospital-drops"},
               "object": {"key": "encounters/a b.csv", "size": 5,
                          "etag": "b1946ac92492d2347c6235b4d2611184",
                          "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                          "sequencer": "617f08299329d189"},
               "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
               "source-ip-address": "1.2.3.4", "reason": "PutObject"}}


def test_documented_shapes_parse() -> None:
    (s3,) = parse_message(json.dumps(AWS_NOTIFICATION))
    assert (s3.bucket, s3.key) == ("hospital-drops", "encounters/2026-11/red flower=1.csv")
    assert s3.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko" and s3.origin == "s3"
    (eb,) = parse_message(json.dumps(AWS_EVENTBRIDGE))
    assert (eb.key, eb.etag, eb.origin) == ("encounters/a b.csv",
                                            "b1946ac92492d2347c6235b4d2611184", "eventbridge")
    assert parse_event(AWS_EVENTBRIDGE) == [eb]  # as a Lambda receives it
    sns = {"Type": "Notification", "Message": json.dumps(AWS_NOTIFICATION)}
    assert parse_message(json.dumps(sns)) == [s3]


def test_test_events_and_other_kinds_are_nothing_to_do() -> None:
    assert parse_message(json.dumps(AWS_TEST_EVENT)) == []
    deleted = {**AWS_EVENTBRIDGE, "detail-type": "Object Deleted"}
    assert parse_message(json.dumps(deleted)) == []
    removed = json.loads(json.dumps(AWS_NOTIFICATION))
    removed["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert parse_message(json.dumps(removed)) == []


@pytest.mark.parametrize(("body", "says"), [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object, got list"),
    ('{"hello": 1}', "neither an S3 event notification"),
    ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}, "object": {}}}]}',
     r"Records\[0\]\.s3: no bucket\.name"),
    (json.dumps({**AWS_EVENTBRIDGE, "detail": {"bucket": {"name": "b"}}}),
     "detail: no object"),
])
def test_a_body_that_is_no_event_says_why(body: str, says: str) -> None:
    with pytest.raises(EventError, match=says):
        parse_message(body)


def test_payloads_from_moto_both_paths(moto_server: str) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    direct, bridged = wire("s3"), wire("eventbridge")
    for bucket in (direct.bucket, bridged.bucket):
        s3.put_object(Bucket=bucket, Key="in/a b+c.csv", Body=b"x,y\n1,2\n")
        s3.put_object(Bucket=bucket, Key="in/a b+c.csv", Body=b"x,y\n3,4\n")  # new version
    got = [e for body in drain(direct.queue_url) for e in parse_message(body)]
    assert [e.key for e in got] == ["in/a b+c.csv"] * 2  # the test event yields nothing
    assert got[0].etag != got[1].etag  # unversioned: the content names the version
    bridged_events = [e for body in drain(bridged.queue_url) for e in parse_message(body)]
    assert [e.key for e in bridged_events] == ["in/a b+c.csv"] * 2
    first, second = bridged_events
    # moto repeats one sequencer for every event: the version id tells them apart.
    assert first.sequencer == second.sequencer and first.version_id != second.version_id
    ids = {run_id_for("readmission", e) for e in [*got, *bridged_events]}
    assert len(ids) == 4 and all(RUN_ID.fullmatch(i) for i in ids)


def test_run_ids_name_object_versions_not_deliveries() -> None:
    event = ObjectEvent("b", "k.csv", version_id="v1", sequencer="s")
    again = ObjectEvent("b", "k.csv", version_id="v1", sequencer="other", origin="eventbridge")
    assert run_id_for("readmission", event) == run_id_for("readmission", again)
    assert run_id_for("readmission", event) != run_id_for(
        "readmission", ObjectEvent("b", "k.csv", version_id="v2"))
    assert run_id_for("readmission", event) != run_id_for("length-of-stay", event)
    long = run_id_for("a-very-long-pipeline-name-indeed", event)
    assert len(long) <= 32 and RUN_ID.fullmatch(long)
    unversioned = ObjectEvent("b", "k.csv", version_id="null", etag="e1")
    assert parse_event({"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": "b"}, "object": {"key": "k.csv", "versionId": "null",
                                            "eTag": "e1"}}}]})[0].version_id == ""
    assert run_id_for("r", unversioned) != run_id_for(
        "r", ObjectEvent("b", "k.csv", etag="e2"))


TRIGGER = "\ntrigger:\n  bucket: hospital-drops\n  prefix: encounters/\n  suffix: .csv\n"


def test_the_trigger_section_fills_the_source(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.read_text() + TRIGGER)
    spec = load_spec(path)
    assert spec.trigger_target() == ("ingest", "source")
    event = ObjectEvent("hospital-drops", "encounters/x.csv", version_id="v")
    assert overrides_for(spec, event) == {"stages.ingest.params.source":
                                          "s3://hospital-drops/encounters/x.csv"}
    assert refusal(spec, event) is None
    assert "glob character" in str(refusal(spec, ObjectEvent("hospital-drops", "e/[1].csv")))
    assert "folder marker" in str(refusal(spec, ObjectEvent("hospital-drops", "encounters/")))


@pytest.mark.parametrize(("section", "says"), [
    ("trigger:\n  bucket: Bad_Bucket\n", "trigger.bucket: 'Bad_Bucket': an S3 bucket name"),
    ("trigger:\n  bucket: b-1\n  stage: nosuch\n", "trigger.stage: 'nosuch' is not a stage"),
    ("trigger:\n  bucket: b-1\n  stage: train\n",
     "trigger.param: stage 'train' reads no raw data from 'source'"),
    ("trigger:\n  bucket: b-1\n  param: sql\n", "trigger.stage: None is not a stage"),
    ("trigger:\n  bucket: b-1\n  prefx: a/\n", "trigger.prefx"),
])
def test_a_wrong_trigger_names_its_field(tmp_path: Path, section: str, says: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.read_text() + "\n" + section)
    with pytest.raises(SpecError, match=says):
        load_spec(path)


def test_format_unknown_from_the_key_is_refused(tmp_path: Path) -> None:
    text = (SPEC.read_text().replace("      format: csv\n", "")
            + TRIGGER.replace("  suffix: .csv\n", ""))
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_spec(path)
    assert refusal(spec, ObjectEvent("hospital-drops", "encounters/x.csv.gz")) is None
    assert "cannot tell the format" in str(
        refusal(spec, ObjectEvent("hospital-drops", "encounters/x.xlsx")))


def test_parsing_and_claims_need_no_boto3() -> None:
    import subprocess
    import sys

    code = ("import sys, json; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
            "from batchline.events import parse_message, run_id_for\n"
            "from batchline.claims import Claim\n"
            f"(e,) = parse_message(json.dumps({AWS_EVENTBRIDGE!r}))\n"
            "print(run_id_for('readmission', e))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert RUN_ID.fullmatch(done.stdout.strip())


def test_listen_refuses_a_spec_without_trigger_and_bad_options(tmp_path: Path) -> None:
    from conftest import run_cli

    plain = run_cli("listen", str(SPEC), "--queue", "https://sqs.us-east-1.amazonaws.com/1/q")
    assert plain.returncode == 2 and "has no trigger section" in plain.stderr
    wrong = run_cli("listen", str(SPEC), "--queue", "https://sqs.us-east-1.amazonaws.com/1/q",
                    "--set", "trigger.bucket=hospital-drops", "--storage", str(tmp_path),
                    "--backend", "kubernetes", "-o", "namespace=Bad_NS")
    assert wrong.returncode == 2 and "--option.namespace: 'Bad_NS'" in wrong.stderr
    assert "Traceback" not in plain.stderr + wrong.stderr
