"""Pydantic's validation errors in the words a person uses, with "did you mean".

Pydantic says "Extra inputs are not permitted" and "Input should be greater
than or equal to 0"; a person writing a spec wants "unknown field 'fromat';
did you mean 'format'?" and "must be 0 or more, not -1". This module turns
each error into one `path: message` line. It knows nothing of the spec's
shape beyond the model it is given, so backends use it for their options too.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]

# Per-type wording; {input} is the offending value as written, {ctx keys} from pydantic.
_WORDS: dict[str, str] = {
    "greater_than_equal": "must be {ge} or more, not {input}",
    "greater_than": "must be more than {gt}, not {input}",
    "less_than_equal": "must be {le} or less, not {input}",
    "less_than": "must be less than {lt}, not {input}",
    "int_parsing": "must be a whole number, not {input}",
    "int_type": "must be a whole number, not {input}",
    "int_from_float": "must be a whole number, not {input}",
    "float_parsing": "must be a number, not {input}",
    "float_type": "must be a number, not {input}",
    "bool_parsing": "must be true or false, not {input}",
    "bool_type": "must be true or false, not {input}",
    "string_type": "must be text, not {input}",
    "dict_type": "must be a mapping (`name: value` lines), not {input}",
    "model_type": "must be a mapping (`name: value` lines), not {input}",
    "model_attributes_type": "must be a mapping (`name: value` lines), not {input}",
    "list_type": "must be a list (`[a, b]` or lines starting with '- '), not {input}",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "takes at most {max_length} item(s)",
    "string_too_short": "needs at least {min_length} character(s)",
    "string_too_long": "takes at most {max_length} character(s)",
    "string_pattern_mismatch": "{input} does not match the pattern {pattern}",
}


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def shown(value: Any) -> str:
    """A value as a person wrote it in YAML, kept short."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def explain(exc: ValidationError, model: type[BaseModel] | None = None,
            prefix: Loc = (), hints: dict[str, str] | None = None) -> list[str]:
    """Every error of `exc` as a `path: message` line.

    `model` is the model that was validated (for the fields an unknown one
    could have meant); `prefix` is the path of that model inside the spec;
    `hints` maps a full dotted path to wording that replaces pydantic's for
    a pattern the user cannot be expected to read (a regex).
    """
    lines = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        path = ".".join(str(p) for p in loc)
        message = _message(err, model, tuple(err["loc"]), (hints or {}).get(path))
        lines.append(f"{path}: {message}" if path else message)
    return lines


def _message(err: Any, model: type[BaseModel] | None, loc: Loc, hint: str | None) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        fields = _fields_at(model, loc[:-1]) if model else None
        if fields is None:
            return "unknown field"
        guess = did_you_mean(loc[-1], fields)
        return f"unknown field {str(loc[-1])!r}" + (
            guess or f"; the fields here are: {', '.join(fields)}")
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return (f"{shown(err['input'])} is not allowed{did_you_mean(err['input'], choices)} "
                f"(choose one of: {', '.join(choices)})")
    if kind == "missing":
        return f"missing; add `{loc[-1]}:` here" if loc else "missing"
    if hint and kind == "string_pattern_mismatch":
        return f"{shown(err['input'])}: {hint}"
    if kind in _WORDS:
        return _WORDS[kind].format(input=shown(err.get("input")), **ctx)
    # value_error and assertion_error carry our own validators' words.
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The field names of the model found by following `loc` from `model`."""
    annotation: Any = model
    for key in loc:
        annotation = _step(annotation, key)
        if annotation is None:
            return None
    target = _model_in(annotation)
    return list(target.model_fields) if target else None


def _step(annotation: Any, key: str | int) -> Any:
    target = _model_in(annotation)
    if target is not None:
        field = target.model_fields.get(str(key))
        return field.annotation if field else None
    origin = get_origin(annotation)
    if origin is dict:
        return get_args(annotation)[1]
    if origin in (list, tuple):
        return get_args(annotation)[0]
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation names, looking inside `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arm in get_args(annotation):
            if arm is not type(None) and get_origin(arm) is not Literal:
                found = _model_in(arm)
                if found:
                    return found
    return None


def report(source: str, problems: Sequence[str]) -> str:
    """The whole list, one problem a line, under a heading that counts them."""
    unique = list(dict.fromkeys(problems))
    noun = "problem" if len(unique) == 1 else "problems"
    return f"{source}: {len(unique)} {noun} in the pipeline spec\n" + "\n".join(
        f"  {line}" for line in unique)
