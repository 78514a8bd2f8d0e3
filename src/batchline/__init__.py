"""batchline: model-building jobs as four containerized batch stages."""

from __future__ import annotations

__version__ = "0.1.0"

STAGES: tuple[str, ...] = ("ingest", "features", "train", "score")
