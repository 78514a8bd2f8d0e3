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
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from batchline import quantity
from batchline.errors import SpecError
from batchline.params import PromoteSpec, SegmentsSpec
from batchline.pipeline import Pipeline, build
from batchline.spec_errors import did_you_mean, explain, report
from batchline.stages import STAGES

_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
# Backends whose options may also sit at the top level of a spec.
TOP_LEVEL_BACKENDS = ("kubernetes", "sagemaker")
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"  # S3's bucket naming rules
_SET_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*")
_CHECKED_BY_PARSE_SPEC = "stage checks done by parse_spec"
_HINTS = {"trigger.bucket": "an S3 bucket name: 3-63 lowercase letters, digits, '.' and '-'",
          "name": "use 1-40 lowercase letters, digits and '-', starting and ending with a "
                  "letter or digit (it names Jobs and run ids)"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourcesSpec(_Model):
    cpu: str = "1"
    memory: str = "2Gi"
    timeout_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600)

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        # Kubernetes takes `cpu: 2` or `memory: 1073741824` as numbers too (so does --set).
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value

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


class TriggerSpec(_Model):
    """Runs started by new objects in a bucket (`batchline listen`, the Lambda handler):
    an object under `prefix` ending in `suffix` becomes `stages.<stage>.params.<param>`."""

    bucket: str = Field(pattern=_BUCKET)
    prefix: str = ""
    suffix: str = ""
    # Default: the first stage of the pipeline that reads raw data (ingest).
    stage: str | None = None
    param: str = "source"


class PipelineSpec(_Model):
    name: str = Field(pattern=_NAME)
    storage: str = "./batchline-data"
    image_registry: str = "localhost"
    image_tag: str = "0.1.0"
    stages: dict[str, StageSpec] = Field(min_length=1)
    # Options of each backend (`kubernetes: {namespace: ...}`), validated by the
    # backend's own options model; command-line options override them.
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A fleet: one model per segment; handed to the stages whose params take it.
    segments: SegmentsSpec | None = None
    # The fleet's promotion gate (registry champions); needs segments.
    promote: PromoteSpec | None = None
    # Runs started by new data in S3 (batchline listen, the Lambda handler).
    trigger: TriggerSpec | None = None

    @model_serializer(mode="wrap")
    def _without_unset_sections(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Specs without these optional sections dump (into manifests, launcher
        # Jobs) as before they existed.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("segments", "promote", "trigger"):
                if name in data and data[name] is None:
                    del data[name]
        return data

    @model_validator(mode="after")
    def _promote_needs_segments(self) -> PipelineSpec:
        if self.promote is not None and self.segments is None:
            raise ValueError("promote: gates a fleet's models; add a segments: section (for "
                             "one model per run, leave promote: out)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _legacy_backend_sections(cls, data: Any) -> Any:
        return merge_legacy_sections(data)

    @model_validator(mode="after")
    def _check_stages(self, info: ValidationInfo) -> PipelineSpec:
        # parse_spec runs these checks on the raw mapping itself, alongside the
        # field errors, so that one layer of errors never hides another.
        if not (info.context or {}).get(_CHECKED_BY_PARSE_SPEC):
            problems = stage_problems(self.model_dump()) or _graph_problems(self.model_dump())
            if problems:
                raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _check_trigger(self) -> PipelineSpec:
        if self.trigger is not None and set(self.stages) <= set(STAGES):
            self.trigger_target()  # raises ValueError naming trigger.stage / trigger.param
        return self

    def trigger_target(self) -> tuple[str, str]:
        """The stage and param a triggering object fills: `trigger.stage` (default: the
        first stage that reads raw data) and `trigger.param` (one of its source params)."""
        trigger = self.trigger
        if trigger is None:
            raise ValueError("trigger: this spec has no trigger section")
        readers = [s for s in self.stages if trigger.param in STAGES[s].source_params]
        stage = trigger.stage or (readers[0] if readers else None)
        if stage is None or stage not in self.stages:
            raise ValueError(f"trigger.stage: {stage!r} is not a stage of this spec that reads "
                             f"raw data (those reading {trigger.param!r}: "
                             f"{', '.join(readers) or 'none'})")
        if trigger.param not in STAGES[stage].source_params:
            raise ValueError(f"trigger.param: stage {stage!r} reads no raw data from "
                             f"{trigger.param!r}; its source params: "
                             f"{', '.join(STAGES[stage].source_params) or 'none'}")
        return stage, trigger.param

    @cached_property
    def pipeline(self) -> Pipeline:
        """The stages of this spec in run order, with their inputs wired."""
        return build(list(self.stages), {s: spec.inputs for s, spec in self.stages.items()})

    def params(self, stage: str) -> BaseModel:
        """The stage's params, validated (already checked at load time), with the spec's
        `segments:` section for the stages that take it."""
        model = STAGES[stage].params
        extra: dict[str, Any] = {}
        if self.segments is not None:
            extra = {name: value for name, value in (("segments", self.segments),
                                                     ("promote", self.promote))
                     if name in model.model_fields and value is not None}
        return model(**self.stages[stage].params, **extra)

    def image(self, stage: str) -> str:
        return f"{self.image_registry}/batchline-{stage}:{self.image_tag}"

    def backend_options(self, backend: str) -> dict[str, Any]:
        return dict(self.backends.get(backend, {}))


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


def merge_legacy_sections(data: Any) -> Any:
    """`kubernetes:` or `sagemaker:` at the top level (as specs written before
    `backends:` had it) is the same as `backends: {kubernetes: ...}`; keys under
    `backends:` win."""
    if not isinstance(data, dict):
        return data
    for name in TOP_LEVEL_BACKENDS:
        if name not in data:
            continue
        data = dict(data)
        section = data.pop(name) or {}
        backends = data.get("backends") or {}
        if isinstance(backends, dict):
            if isinstance(section, dict):  # anything else is reported as not a mapping
                section = {**section, **(backends.get(name) or {})}
            data["backends"] = {**backends, name: section}
    return data


def stage_problems(data: dict[str, Any]) -> list[str]:
    """Unknown stage names, shards on a stage that cannot be sharded, bad params.

    Works on the raw mapping so that it runs even when other fields are wrong.
    """
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return []
    problems = []
    for name, raw in stages.items():
        if name not in STAGES:
            problems.append(f"stages.{name}: unknown stage {name!r}"
                            f"{did_you_mean(name, STAGES)} (stages: {', '.join(STAGES)})")
            continue
        raw = raw if isinstance(raw, dict) else {}
        shards = raw.get("shards")
        # Train fans out per segment: with `segments:` its shards are worker processes.
        fleet = name == "train" and isinstance(data.get("segments"), dict)
        if isinstance(shards, int) and shards > 1 and not STAGES[name].shardable and not fleet:
            shardable = ", ".join(s for s, d in STAGES.items() if d.shardable)
            problems.append(f"stages.{name}.shards: stage {name!r} cannot be sharded "
                            f"(shardable: {shardable}); remove shards or set it to 1")
        params = raw.get("params")
        for section in ("segments", "promote"):
            if isinstance(params, dict) and section in params:
                problems.append(f"stages.{name}.params.{section}: {section} is set once, at the "
                                f"top level of the spec ({section}: {{...}}); move it")
                params = {k: v for k, v in params.items() if k != section}
        if isinstance(params, dict):
            model = STAGES[name].params
            try:
                model(**params)
            except ValidationError as exc:
                problems += explain(exc, model, ("stages", name, "params"))
    return problems


def _graph_problems(data: dict[str, Any]) -> list[str]:
    """A dataset no stage writes, an unknown input: checked once every name is known."""
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages or any(s not in STAGES for s in stages):
        return []
    inputs = {name: (raw or {}).get("inputs") or {} for name, raw in stages.items()
              if isinstance(raw, dict | None)}
    if any(not isinstance(v, dict) for v in inputs.values()):
        return []  # reported as a field error
    try:
        build(list(stages), inputs)
    except ValueError as exc:
        return str(exc).splitlines()
    return []


def _backend_problems(data: dict[str, Any]) -> list[str]:
    from batchline.backends import option_problems

    backends = data.get("backends")
    if not isinstance(backends, dict):
        return []
    return [line for name, options in backends.items() if isinstance(options, dict | None)
            for line in option_problems(name, options or {}, f"backends.{name}")]


def parse_spec(data: Any, source: str = "<spec>",
               overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Validate a spec mapping; raise one SpecError listing every problem at once."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a pipeline spec is a YAML mapping, got {type(data).__name__}")
    for key, value in {**_env_overrides(), **(overrides or {})}.items():
        _set_path(data, key, value)
    data = merge_legacy_sections(data)
    problems: list[str] = []
    spec = None
    try:
        spec = PipelineSpec.model_validate(data, context={_CHECKED_BY_PARSE_SPEC: True})
    except ValidationError as exc:
        problems += explain(exc, PipelineSpec, hints=_HINTS)
    problems += stage_problems(data)
    problems += _graph_problems(data)
    problems += _backend_problems(data)
    if problems or spec is None:
        raise SpecError(report(source, problems))
    return spec


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
