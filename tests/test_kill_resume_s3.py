"""The SIGKILL/resume chains of test_kill_resume.py with S3 (moto) as storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_kill_resume import kill_and_resume

pytestmark = pytest.mark.slow


def test_random_sigkills_always_resume_to_a_clean_result_on_s3(tmp_path: Path,
                                                                s3_bucket: str) -> None:
    kill_and_resume("s3", tmp_path, f"{s3_bucket}/kills")
