"""S3 -> SQS wiring on the moto server, as users set it up on AWS (README, event-triggered
runs): a bucket notification straight to a queue, or EventBridge ("Object Created") with a
rule targeting the queue; the queue with a dead-letter queue after `max_receives`."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import boto3


@dataclass(frozen=True)
class Wiring:
    bucket: str
    queue_url: str
    dlq_url: str


def _sqs() -> Any:
    return boto3.client("sqs", region_name="us-east-1")


def queue_with_dlq(max_receives: int = 3, visibility: int = 2) -> tuple[str, str]:
    """A queue whose messages move to a dead-letter queue after `max_receives` receives."""
    sqs, name = _sqs(), f"bl-{uuid.uuid4().hex[:10]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(max_receives)})})["QueueUrl"]
    return queue, dlq


def wire(path: str, max_receives: int = 3, visibility: int = 2, prefix: str = "") -> Wiring:
    """A new bucket whose created objects reach a new queue: path "s3" (a bucket
    notification) or "eventbridge" (versioned bucket, EventBridge rule -> queue)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    bucket = f"bl-drop-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    queue, dlq = queue_with_dlq(max_receives, visibility)
    arn = _sqs().get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    if path == "s3":
        rule: dict[str, Any] = {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
        if prefix:
            rule["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [rule]})
    else:
        s3.put_bucket_versioning(Bucket=bucket,
                                 VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}})
        events = boto3.client("events", region_name="us-east-1")
        name = f"{bucket}-created"
        events.put_rule(Name=name, EventPattern=json.dumps({
            "source": ["aws.s3"], "detail-type": ["Object Created"],
            "detail": {"bucket": {"name": [bucket]}}}))
        events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
    return Wiring(bucket, queue, dlq)


def drain(queue_url: str, wait: int = 0) -> list[str]:
    """Receive and delete every visible message; their bodies."""
    sqs, bodies = _sqs(), []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=wait).get("Messages", [])
        if not got:
            return bodies
        for message in got:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def counts(queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attrs = _sqs().get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def send(queue_url: str, body: str, times: int = 1) -> None:
    for _ in range(times):
        _sqs().send_message(QueueUrl=queue_url, MessageBody=body)
