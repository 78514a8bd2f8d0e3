"""Object-store trouble is one paragraph: configuration exits 2, an outage exits 3.

Against moto's real server (and a port nobody listens on), through the real
CLI and the real stage entrypoint; a distinctive secret checks that no
credential ever reaches a message.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, SPEC, free_port

from batchline import storage
from batchline.errors import StorageMisconfigured

SECRET = "never-print-this-secret-k3y"
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def _cli(*args: str, **env: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    result = subprocess.run([sys.executable, "-m", "batchline.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**base, "COLUMNS": "400", **env})
    text = result.stderr + result.stdout
    assert "Traceback" not in text and SECRET not in text, text
    return result.returncode, " ".join(text.split())


def _creds(moto_server: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": SECRET}


def test_a_bucket_that_does_not_exist_is_configuration(moto_server: str) -> None:
    code, text = _cli("run", str(SPEC), "--storage", "s3://no-such-bucket-here/root",
                      **_creds(moto_server))
    assert code == 2, text
    assert f"at endpoint {moto_server} (AWS_ENDPOINT_URL): the bucket 'no-such-bucket-here' " \
           "does not exist there; check the bucket name" in text, text


def test_no_credentials_is_configuration(moto_server: str, s3_bucket: str) -> None:
    code, text = _cli("run", str(SPEC), "--storage", f"{s3_bucket}/root",
                      AWS_ENDPOINT_URL=moto_server)
    assert code == 2, text
    assert "no credentials were found; set AWS_ACCESS_KEY_ID" in text, text


def test_an_unknown_endpoint_host_is_configuration_at_once() -> None:
    code, text = _cli("runs", "--storage", "s3://bucket/root",
                      AWS_ENDPOINT_URL="http://no-such-host.invalid:9000",
                      AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=SECRET)
    assert code == 2, text
    assert "cannot reach s3://bucket/root/runs at endpoint http://no-such-host.invalid:9000 " \
           "(AWS_ENDPOINT_URL): the host name 'no-such-host.invalid' does not exist" in text


def test_no_endpoint_names_the_aws_default_and_the_region() -> None:
    # Without AWS_ENDPOINT_URL the bucket's own AWS host name is looked up; it
    # does not resolve on this machine (no route to AWS), nor for a made-up region.
    code, text = _cli("runs", "--storage", "s3://bucket/root", AWS_REGION="xx-nowhere-9")
    assert code == 2, text
    assert "at endpoint https://s3.xx-nowhere-9.amazonaws.com (AWS's own for region " \
           "xx-nowhere-9; no AWS_ENDPOINT_URL is set)" in text, text
    assert "check AWS_ENDPOINT_URL, or AWS_REGION" in text, text


def test_an_endpoint_that_refuses_connections_is_an_outage() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    code, text = _cli("run", str(SPEC), "--storage", "s3://bucket/root",
                      AWS_ENDPOINT_URL=closed, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY=SECRET, BATCHLINE_S3_MAX_ATTEMPTS="1",
                      BATCHLINE_STORAGE_RETRY_SECONDS="1")
    assert code == 3, text
    assert f"the object store at {closed} (AWS_ENDPOINT_URL) kept failing; check that it is " \
           "up and reachable from here, then resume the run" in text, text


def test_the_library_raises_the_configuration_error(moto_server: str) -> None:
    # pyarrow's own S3 client (not boto3) meets the missing bucket here.
    storage._FS_CACHE.clear()
    with pytest.raises(StorageMisconfigured, match="the bucket 'no-such-bucket-2' does not "
                       "exist"):
        storage.write_text("s3://no-such-bucket-2/runs/r1/x.json", "{}")


def test_a_stage_exits_2_for_configuration_never_retried(moto_server: str) -> None:
    base = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    result = subprocess.run(
        [sys.executable, "-m", "batchline.stage", "ingest", "--task",
         "s3://no-such-bucket-3/runs/r1/ingest/task-1.json"], capture_output=True, text=True,
        timeout=120, check=False, env={**base, **_creds(moto_server)})
    assert result.returncode == 2, result.stderr
    assert "the bucket 'no-such-bucket-3' does not exist" in result.stderr
    assert SECRET not in result.stderr
