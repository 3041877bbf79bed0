"""One validation system for every file hps reads: pydantic models with strict scalar types and
one error formatter.

Every error becomes one line ``FILE: KEY: VALUE PROBLEM; ALLOWED``, for example
``spaces/x.yaml: optimizer.name: 'lion' is not allowed; choose one of sgd, adam, adamw, radam``.
The trainer's config (:mod:`trainers.config`) and the search's space files (``search/space.py``)
both build on it, so a mistake reads the same wherever it is made.

Scalar types are strict where YAML would otherwise guess: a bool is never a number, a number is
never a string, ``2.5`` is not an integer. Numbers written as YAML 1.1 reads them (``5e-4`` comes
back as a string) are accepted as numbers.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import annotated_types
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, everything else as YAML flow text."""
    if isinstance(value, str):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("hps", "is not allowed; expected a number")
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        return float(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise PydanticCustomError("hps", "is not allowed; expected a finite number")
        return float(value)
    raise PydanticCustomError("hps", "is not allowed; expected a number")


def _integer(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("hps", "is not allowed; expected an integer")
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise PydanticCustomError("hps", "is not allowed; expected an integer")


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise PydanticCustomError("hps", "is not allowed; expected true or false")


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise PydanticCustomError("hps", "is not allowed; expected a string")


def _or_none(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text)]
OptNumber = Annotated[float | None, BeforeValidator(_or_none(_number))]
OptInteger = Annotated[int | None, BeforeValidator(_or_none(_integer))]
OptText = Annotated[str | None, BeforeValidator(_or_none(_text))]


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> AfterValidator:
    """A string restricted to ``choices`` (a callable is asked at validation time: registries)."""

    def check(value: str) -> str:
        if value is None:  # an optional key left unset
            return value
        allowed = list(choices() if callable(choices) else choices)
        if value not in allowed:
            raise PydanticCustomError("hps", "is not allowed; choose one of {allowed}", {"allowed": ", ".join(allowed)})
        return value

    check.choices = choices  # type: ignore[attr-defined]  # read by allowed_text()
    return AfterValidator(check)


class Strict(BaseModel):
    """Unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=False)


# --- formatting -------------------------------------------------------------------------------

def _unwrap(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _field_at(root: type[BaseModel], loc: Sequence[Any]) -> tuple[type[BaseModel] | None, Any]:
    """The model that holds the last element of ``loc`` and that element's FieldInfo (or None)."""
    model: Any = root
    info = None
    i = 0
    while i < len(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None, None
        name = loc[i]
        if name not in model.model_fields:
            return model, None
        info = model.model_fields[name]
        if i == len(loc) - 1:
            return model, info
        tp = _unwrap(info.annotation)
        i += 1
        while typing.get_origin(tp) in (dict, list) and i < len(loc):  # a key or an index
            tp = _unwrap(typing.get_args(tp)[-1])
            i += 1
        model = tp
    return (model if isinstance(model, type) and issubclass(model, BaseModel) else None), None


def allowed_text(info: Any) -> str:
    """What a field allows, from its metadata: ``> 0 and <= 8`` or ``choose one of a, b``."""
    if info is None:
        return ""
    parts = []
    for m in info.metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{op} {getattr(m, attr):g}")
        choices = getattr(getattr(m, "func", None), "choices", None)
        if choices is not None:
            return "choose one of " + ", ".join(choices() if callable(choices) else choices)
    return " and ".join(sorted(parts, key=lambda p: p[0] != ">"))


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


_MISSING = object()


def _raw_at(raw: Any, loc: Sequence[Any]) -> Any:
    for p in loc:
        try:
            raw = raw[p]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def error_line(source: str, e: ValidationError, root: type[BaseModel], prefix: str = "", raw: Any = _MISSING) -> str:
    """The first error of ``e`` as one line ``source: key: value problem; allowed``. ``raw``, the
    data as read, lets the line show a value as the user wrote it (``0``, not ``0.0``)."""
    err = e.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]  # drop union tags
    kind, value = err["type"], err.get("input")
    written = _raw_at(raw, loc)
    if written is not _MISSING and not isinstance(written, (Mapping, list)):
        value = written
    model, info = _field_at(root, loc)
    key = _dotted([prefix, *loc] if prefix else loc)
    where = f"{source}: {key}" if key else source
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "extra_forbidden":
        fields = ", ".join(model.model_fields) if model is not None else ""
        return f"{where}: unknown key; allowed keys: {fields}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{where}: expected a mapping of keys, got {show(value)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where}: {show(value)} is out of range; allowed {allowed_text(info)}"
    if kind == "list_type":
        return f"{where}: {show(value)} is not allowed; expected a list"
    if kind in ("finite_number",):
        return f"{where}: {show(value)} is not allowed; expected a finite number"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "hps" and not isinstance(value, Mapping) and value is not None:
        return f"{where}: {show(value)} {msg}"
    if kind == "hps" and value is None:
        return f"{where}: null {msg}"
    if kind == "value_error" or isinstance(value, Mapping):
        return f"{where}: {msg}"
    return f"{where}: {show(value)}: {msg}"
