"""batchline: model-building jobs as containerized batch stages (see batchline.stages)."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy: stage processes import `batchline.*` and must not pay for the client.
    if name == "Client":
        from batchline.client import Client

        return Client
    raise AttributeError(f"module 'batchline' has no attribute {name!r}")
