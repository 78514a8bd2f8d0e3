"""The pipeline spec: YAML validated by pydantic, errors naming the field path.

Precedence, in one place: the file, then `BATCHLINE_*` environment variables,
then command-line `--set path=value` overrides (applied by the CLI through
`load_spec(overrides=...)`).
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from batchline import quantity
from batchline.errors import SpecError
from batchline.pipeline import Pipeline, build
from batchline.stages import STAGES

_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
# Backends whose options may also sit at the top level of a spec.
TOP_LEVEL_BACKENDS = ("kubernetes", "sagemaker")
_SET_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourcesSpec(_Model):
    cpu: str = "1"
    memory: str = "2Gi"
    timeout_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        quantity.cpu_cores(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        quantity.memory_bytes(value)
        return value


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
    # input name -> URI of a committed dataset, for inputs no stage of this spec writes
    inputs: dict[str, str] = Field(default_factory=dict)


class PipelineSpec(_Model):
    name: str = Field(pattern=_NAME)
    storage: str = "./batchline-data"
    image_registry: str = "localhost"
    image_tag: str = "0.1.0"
    stages: dict[str, StageSpec] = Field(min_length=1)
    # Options of each backend (`kubernetes: {namespace: ...}`), validated by the
    # backend's own options model; command-line options override them.
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _backend_sections(cls, data: Any) -> Any:
        # `kubernetes:` or `sagemaker:` at the top level is the same as
        # `backends: {kubernetes: ...}` (keys under `backends:` win).
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in TOP_LEVEL_BACKENDS:
            if name in data:
                section = data.pop(name) or {}
                backends = data.get("backends") or {}
                data["backends"] = {**backends, name: {**section, **backends.get(name, {})}}
        return data

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineSpec:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages: unknown stages {unknown}; known stages: {list(STAGES)}")
        problems = [f"stages.{name}.shards: stage {name!r} cannot be sharded (shardable: "
                    f"{', '.join(s for s, d in STAGES.items() if d.shardable)}); remove "
                    "shards or set it to 1"
                    for name, stage in self.stages.items()
                    if stage.shards > 1 and not STAGES[name].shardable]
        if problems:
            raise ValueError("\n".join(problems))
        _ = self.pipeline  # builds the graph: a missing dataset is an error here
        return self

    @cached_property
    def pipeline(self) -> Pipeline:
        """The stages of this spec in run order, with their inputs wired."""
        return build(list(self.stages), {s: spec.inputs for s, spec in self.stages.items()})

    def params(self, stage: str) -> BaseModel:
        """The stage's params, validated (already checked at load time)."""
        return STAGES[stage].params(**self.stages[stage].params)

    def image(self, stage: str) -> str:
        return f"{self.image_registry}/batchline-{stage}:{self.image_tag}"

    def backend_options(self, backend: str) -> dict[str, Any]:
        return dict(self.backends.get(backend, {}))


def _format_error(source: str, exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (*prefix, *err["loc"]))
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {path}: {message}" if path else f"  {message}")
    return f"{source}: invalid pipeline spec\n" + "\n".join(lines)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if child is None:
            child = node[key] = {}
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
            STAGES[stage].params(**stage_spec.params)
        except ValidationError as exc:
            raise SpecError(_format_error(source, exc, ("stages", stage, "params"))) from None
    _check_backend_options(spec, source)
    return spec


def _check_backend_options(spec: PipelineSpec, source: str) -> None:
    from batchline.backends import validate_options

    for name, options in spec.backends.items():
        validate_options(name, options, f"{source}: backends.{name}")


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Read and validate a YAML pipeline spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a spec file") from None
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
        key, sep, value = pair.partition("=")
        if not sep or not _SET_KEY.fullmatch(key):
            raise SpecError(f"--set {pair!r}: expected dotted.path=value")
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {key}: the value {value!r} is not valid YAML "
                            f"({exc.__class__.__name__}); quote it as a string") from None
    return out
