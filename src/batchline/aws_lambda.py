"""A Lambda function that starts one run per new object: `batchline.aws_lambda.handler`.

Wire an EventBridge rule (source aws.s3, detail-type "Object Created", the
bucket's name) to the function. Each invocation parses the event, claims the
object version's run (claims.py) and starts its launcher where it can outlive
the invocation: a Kubernetes launcher Job (backend kubernetes) or a SageMaker
Processing Job running the launcher image (backend sagemaker). EventBridge
retries an invocation that fails and may deliver one event twice; the claim
makes every later delivery a no-op. Configuration comes from the function's
environment:

    BATCHLINE_SPEC      the pipeline spec inside the image (with a trigger: section)
    BATCHLINE_STORAGE   the storage root, s3://bucket/prefix (default: the spec's)
    BATCHLINE_BACKEND   kubernetes or sagemaker (default: sagemaker)
    BATCHLINE_OPTIONS   backend options as JSON, e.g. {"role_arn": "arn:aws:iam::..."}

An object the spec refuses (a format it cannot tell, a glob character in its
key) raises, so the event lands in the function's on-failure destination after
its retries, with the reason in the function's log.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from batchline.errors import SpecError
from batchline.event_runs import EventRunner
from batchline.events import parse_event, run_id_for

log = logging.getLogger(__name__)
_RUNNERS: dict[tuple[str, ...], EventRunner] = {}


def runner_from_env() -> EventRunner:
    """The EventRunner the environment describes, built once per warm container."""
    spec = os.environ.get("BATCHLINE_SPEC", "")
    if not spec:
        raise SpecError("BATCHLINE_SPEC is not set: name the pipeline spec (with a trigger: "
                        "section) the function's image carries")
    backend = os.environ.get("BATCHLINE_BACKEND", "sagemaker")
    raw = os.environ.get("BATCHLINE_OPTIONS", "{}")
    key = (spec, backend, raw, os.environ.get("BATCHLINE_STORAGE", ""))
    if key not in _RUNNERS:
        try:
            options = json.loads(raw)
        except ValueError as exc:
            raise SpecError(f"BATCHLINE_OPTIONS is not JSON ({exc}); give the backend "
                            'options as an object, e.g. {"role_arn": "arn:aws:iam::..."}') from None
        if not isinstance(options, dict):
            raise SpecError("BATCHLINE_OPTIONS: expected a JSON object of backend options")
        _RUNNERS[key] = EventRunner(spec, os.environ.get("BATCHLINE_STORAGE") or None, backend,
                                    options)
    return _RUNNERS[key]


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Claim and start the run of each object the event announces; returns, per object,
    what was done (started, duplicate, ignored) and the run id."""
    logging.getLogger("batchline").setLevel(os.environ.get("BATCHLINE_LOG_LEVEL", "INFO"))
    runner = runner_from_env()
    done = []
    for obj in parse_event(event):
        outcome = runner.handle(obj)
        done.append({"object": obj.describe(), "outcome": str(outcome),
                     "run_id": run_id_for(runner.spec.name, obj)})
    log.info("event %s: %s", event.get("id", "?"), done)
    return {"objects": done}
