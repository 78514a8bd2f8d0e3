"""New objects in S3 as run requests: payloads parsed, matched and named (no boto3).

Three shapes reach batchline, and all become `ObjectEvent`s:

- an S3 event notification delivered to SQS directly (`{"Records": [...]}`, keys
  URL-encoded, `s3:TestEvent` first), possibly wrapped in an SNS envelope;
- S3 -> EventBridge ("Object Created") -> SQS: the EventBridge event as the body;
- the same EventBridge event passed to a Lambda function.

A run's id is derived from the object version (bucket, key and version id; or
ETag and sequencer when the bucket is unversioned), never from an event or
request id: EventBridge and S3 deliver at least once, and an emulator (moto)
gives every event the same id and sequencer. So two deliveries of one upload
name one run, and the claim (claims.py) makes it start once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from batchline.errors import SpecError
from batchline.layout import check_run_id

if TYPE_CHECKING:
    from batchline.spec import PipelineSpec, TriggerSpec

# A key ingest would read as a glob, not as this one object.
_GLOB = re.compile(r"[*?\[]")


class EventError(SpecError):
    """A message that is not an event batchline can act on; retrying will not change it."""


@dataclass(frozen=True)
class ObjectEvent:
    """One object version that was created."""

    bucket: str
    key: str
    version_id: str = ""
    etag: str = ""
    sequencer: str = ""
    origin: str = "s3"  # "s3" (a bucket notification) or "eventbridge"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def identity(self) -> str:
        """What names this object version across every delivery of its event."""
        if self.version_id:
            return f"{self.bucket}/{self.key}?versionId={self.version_id}"
        return f"{self.bucket}/{self.key}?etag={self.etag}&sequencer={self.sequencer}"

    def describe(self) -> str:
        version = f" version {self.version_id}" if self.version_id else ""
        return f"{self.uri}{version}"


def run_id_for(pipeline: str, event: ObjectEvent) -> str:
    """The run of `pipeline` that this object version starts: `<pipeline>-ev-<hash>`,
    a valid run id and Kubernetes name (at most 32 characters)."""
    digest = hashlib.sha256(f"{pipeline}\n{event.identity()}".encode()).hexdigest()
    return check_run_id(f"{pipeline[:12].rstrip('-')}-ev-{digest[:16]}")


def parse_message(body: str) -> list[ObjectEvent]:
    """The created objects an SQS message body announces; [] for test events and other
    kinds of events (deletions, restores). EventError when the body is no event at all."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise EventError(f"the message is not JSON ({exc}); expected an S3 event "
                         "notification or an EventBridge event") from None
    if isinstance(data, dict) and data.get("Type") == "Notification" and "Message" in data:
        return parse_message(str(data["Message"]))  # S3 -> SNS -> SQS
    return parse_event(data)


def parse_event(data: Any) -> list[ObjectEvent]:
    """The created objects in one decoded event: S3 notification or EventBridge event."""
    if not isinstance(data, dict):
        raise EventError(f"an event is a JSON object, got {type(data).__name__}")
    if data.get("Event") == "s3:TestEvent":
        return []
    if "Records" in data:
        return _from_records(data["Records"])
    if "detail-type" in data:
        return _from_eventbridge(data)
    raise EventError("the message is neither an S3 event notification (Records) nor an "
                     f"EventBridge event (detail-type); its keys: {', '.join(sorted(data))}")


def _from_records(records: Any) -> list[ObjectEvent]:
    if not isinstance(records, list):
        raise EventError("Records is not a list")
    out = []
    for i, record in enumerate(records):
        name = _get(record, ("eventName",), f"Records[{i}]")
        if not str(name).startswith("ObjectCreated:"):
            continue
        s3 = _get(record, ("s3",), f"Records[{i}]")
        obj = _get(s3, ("object",), f"Records[{i}].s3")
        out.append(ObjectEvent(
            bucket=str(_get(s3, ("bucket", "name"), f"Records[{i}].s3")),
            # Notification keys are URL-encoded ("red flower.csv" -> "red+flower.csv").
            key=unquote_plus(str(_get(obj, ("key",), f"Records[{i}].s3.object"))),
            version_id=_version(obj.get("versionId")), etag=str(obj.get("eTag", "")),
            sequencer=str(obj.get("sequencer", "")), origin="s3"))
    return out


def _from_eventbridge(data: Mapping[str, Any]) -> list[ObjectEvent]:
    if data.get("source") != "aws.s3" or data.get("detail-type") != "Object Created":
        return []
    detail = _get(data, ("detail",), "event")
    obj = _get(detail, ("object",), "detail")
    return [ObjectEvent(
        bucket=str(_get(detail, ("bucket", "name"), "detail")),
        key=str(_get(obj, ("key",), "detail.object")),  # EventBridge keys are not encoded
        version_id=_version(obj.get("version-id")),
        etag=str(obj.get("etag", obj.get("eTag", ""))),
        sequencer=str(obj.get("sequencer", "")), origin="eventbridge")]


def _version(value: Any) -> str:
    # An unversioned bucket reports no version, or the literal "null".
    return "" if value in (None, "", "null") else str(value)


def _get(node: Any, path: tuple[str, ...], where: str) -> Any:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            raise EventError(f"{where}: no {'.'.join(path)} in the event")
        node = node[key]
    return node


def matches(trigger: TriggerSpec, event: ObjectEvent) -> bool:
    """Whether a spec's `trigger:` watches this object (bucket, prefix, suffix)."""
    return (event.bucket == trigger.bucket and event.key.startswith(trigger.prefix)
            and event.key.endswith(trigger.suffix))


def refusal(spec: PipelineSpec, event: ObjectEvent) -> str | None:
    """Why a watched object cannot start a run of `spec`, or None if it can."""
    stage, param = spec.trigger_target()
    if event.key.endswith("/"):
        return f"{event.uri} is a folder marker, not a data file"
    if _GLOB.search(event.key):
        return (f"{event.uri} has a glob character (*, ? or [) in its key; stages.{stage}."
                f"params.{param} would read it as a pattern. Rename the object")
    if stage == "ingest" and not spec.stages[stage].params.get("format"):
        from batchline.stages.ingest_sources import format_of

        if format_of(event.key.rsplit("/", 1)[-1])[0] is None:
            return (f"cannot tell the format of {event.uri} from its extension; name it .csv, "
                    ".csv.gz, .jsonl, .jsonl.gz or .parquet, set stages.ingest.params.format, "
                    "or narrow trigger.suffix")
    return None


def overrides_for(spec: PipelineSpec, event: ObjectEvent) -> dict[str, str]:
    """The `--set` overrides that make `spec` read this object."""
    stage, param = spec.trigger_target()
    return {f"stages.{stage}.params.{param}": event.uri}
