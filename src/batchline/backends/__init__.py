"""Backends run one StageTask somewhere and report one StageResult.

Each backend lives in its own module (`backends/<name>.py`) that defines a
`Backend` subclass as `BACKEND` and its typed `Options`; it is imported only
when chosen, so a missing optional SDK (kubernetes, boto3) only matters to
those who use it. The template they share is in `base.py`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from batchline.errors import SpecError
from batchline.spec_errors import did_you_mean, explain

if TYPE_CHECKING:
    from batchline.backends.base import Backend


# name -> module; the module defines BACKEND (the class) and Options.
BACKENDS: dict[str, str] = {
    "local": "batchline.backends.local",
    "container": "batchline.backends.container",
    "kubernetes": "batchline.backends.kubernetes",
    "sagemaker": "batchline.backends.sagemaker",
}
# Backends whose stages run on other machines: local folders are not theirs.
REMOTE = frozenset({"kubernetes", "sagemaker"})


def _module(name: str, where: str = "--backend") -> ModuleType:
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise SpecError(f"{where}: unknown backend {name!r}{did_you_mean(name, BACKENDS)} "
                        f"(backends: {known})") from None
    return importlib.import_module(target)


def option_problems(name: str, options: dict[str, Any], where: str) -> list[str]:
    """Every problem with a backend's options, one `path: message` line each."""
    from pydantic import ValidationError

    try:
        module = _module(name, where)
    except SpecError as exc:
        return [str(exc)]
    try:
        module.Options(**options)
    except ValidationError as exc:
        return explain(exc, module.Options, tuple(where.split(".")))
    return []


def validate_options(name: str, options: dict[str, Any], where: str) -> Any:
    """The backend's Options built from `options`; a SpecError naming each bad one."""
    problems = option_problems(name, options, where)
    if problems:
        raise SpecError(f"invalid options for the {name} backend\n"
                        + "\n".join(f"  {line}" for line in problems))
    return _module(name, where).Options(**options)


def get_backend(name: str, options: dict[str, Any] | None = None,
                where: str = "backend option") -> Backend[Any]:
    """Build the named backend from plain options, importing its module only now."""
    module = _module(name)
    backend: Backend[Any] = module.BACKEND(validate_options(name, options or {}, where))
    return backend
