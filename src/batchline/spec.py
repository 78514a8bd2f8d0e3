"""The pipeline spec: YAML validated by pydantic, errors naming the field path.

Precedence, in one place: the file, then `BATCHLINE_*` environment variables,
then command-line `--set path=value` overrides (applied by the CLI through
`load_spec(overrides=...)`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from batchline import STAGES
from batchline.errors import SpecError
from batchline.params import PARAMS_BY_STAGE

_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourcesSpec(_Model):
    cpu: str = Field("1", pattern=_QUANTITY)
    memory: str = Field("2Gi", pattern=_QUANTITY)
    timeout_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600)


class Toleration(_Model):
    key: str
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None


class StageSpec(_Model):
    params: dict[str, Any] = Field(default_factory=dict)
    resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec())
    retries: int = Field(2, ge=0, le=10)
    shards: int = Field(1, ge=1, le=1000)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class KubernetesSpec(_Model):
    namespace: str = Field("batchline", pattern=_NAME)
    service_account: str = Field("batchline-stage", pattern=_NAME)
    ttl_seconds_after_finished: int = Field(3600, ge=0)


class PipelineSpec(_Model):
    name: str = Field(pattern=_NAME)
    storage: str = "./batchline-data"
    image_registry: str = "localhost"
    image_tag: str = "0.1.0"
    stages: dict[str, StageSpec]
    kubernetes: KubernetesSpec = Field(default_factory=lambda: KubernetesSpec())

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineSpec:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; known stages: {list(STAGES)}")
        missing = [s for s in STAGES if s not in self.stages]
        if missing:
            raise ValueError(f"missing stages {missing}; every pipeline declares {list(STAGES)}")
        return self

    def params(self, stage: str) -> BaseModel:
        """The stage's params, validated (already checked at load time)."""
        return PARAMS_BY_STAGE[stage](**self.stages[stage].params)

    def image(self, stage: str) -> str:
        return f"{self.image_registry}/batchline-{stage}:{self.image_tag}"


def _format_error(source: str, exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (*prefix, *err["loc"])) or "(top level)"
        lines.append(f"  {path}: {err['msg']}")
    return f"{source}: invalid pipeline spec\n" + "\n".join(lines)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {dotted}: {key!r} is not a mapping in the spec")
        node = child
    node[keys[-1]] = value


def _env_overrides() -> dict[str, Any]:
    # BATCHLINE_STORAGE=..., BATCHLINE_IMAGE_TAG=... override top-level keys.
    out: dict[str, Any] = {}
    for key in ("storage", "image_registry", "image_tag"):
        value = os.environ.get(f"BATCHLINE_{key.upper()}")
        if value:
            out[key] = value
    return out


def parse_spec(data: Any, source: str = "<spec>",
               overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Validate a spec mapping; raise SpecError naming every bad field path."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a pipeline spec is a YAML mapping, got {type(data).__name__}")
    for key, value in {**_env_overrides(), **(overrides or {})}.items():
        _set_path(data, key, value)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_error(source, exc)) from None
    for stage, stage_spec in spec.stages.items():
        try:
            PARAMS_BY_STAGE[stage](**stage_spec.params)
        except ValidationError as exc:
            raise SpecError(_format_error(source, exc, ("stages", stage, "params"))) from None
    return spec


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Read and validate a YAML pipeline spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: the spec is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data, str(path), overrides)


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """Turn `a.b=value` strings into overrides; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair or not re.match(r"^[A-Za-z0-9_.]+=", pair):
            raise SpecError(f"--set {pair!r}: expected dotted.path=value")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value) if value else ""
    return out
