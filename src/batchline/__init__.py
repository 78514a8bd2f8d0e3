"""batchline: model-building jobs as containerized batch stages (see batchline.stages)."""

from __future__ import annotations

__version__ = "0.1.0"
