"""Backends run one StageTask somewhere and report one StageResult.

Each backend lives in its own module and is imported only when chosen, so a
missing optional SDK (kubernetes, boto3) only matters to those who use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from batchline.errors import SpecError

if TYPE_CHECKING:
    from batchline.backends.base import Backend

# name -> "module:factory"; the factory takes the backend's options dict.
BACKENDS: dict[str, str] = {
    "local": "batchline.backends.local:LocalBackend",
    "container": "batchline.backends.container:ContainerBackend",
    "kubernetes": "batchline.backends.kubernetes:KubernetesBackend",
}


def get_backend(name: str, options: dict[str, object] | None = None) -> Backend:
    """Build the named backend, importing its module only now."""
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise SpecError(f"unknown backend {name!r}; choose one of: {known}") from None
    module_name, factory = target.split(":")
    module = importlib.import_module(module_name)
    backend: Backend = getattr(module, factory)(**(options or {}))
    return backend
