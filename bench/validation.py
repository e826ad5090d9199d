"""pydantic errors as pobench's one-line messages: ``<dotted.field>: <what is wrong, what is allowed>``.

pydantic validates; this module only words its first error the way every pobench message reads
(``train.lr_schedule: 'cosin' is not one of ['constant', 'linear', 'cosine']``), naming the allowed
fields of a mapping when a key is unknown. A leaf module: it imports pydantic only.
"""
from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel


def dotted(loc: tuple[Any, ...]) -> str:
    """('train', 'lora', 'r') -> 'train.lora.r'; list indices as [i]: ('models', 0, 'id') -> 'models[0].id'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unwrap(tp: Any) -> Any:
    """The model class inside Optional[...] / list[...] / dict[str, ...] annotations, else ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(tp):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return tp


def model_at(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` from ``root`` (None when it leaves models)."""
    current: Any = root
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue  # a list index or a dict key: stay on the item type
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def allowed_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _literal_values(expected: str) -> list[Any]:
    """pydantic's ``"'a', 'b' or 'c'"`` back to ['a', 'b', 'c']."""
    values: list[Any] = re.findall(r"'((?:[^'\\]|\\.)*)'", expected)
    return values or [v.strip() for v in re.split(r",| or ", expected) if v.strip()]


def format_error(error: dict[str, Any], root: type[BaseModel] | None = None, prefix: str = "") -> str:
    """One pydantic error dict as a pobench message (``root`` lets unknown-field errors list the allowed)."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    value = error.get("input")
    ctx = error.get("ctx") or {}
    # union members add their type names to loc (e.g. ('lora', 'LoraSettings', 'r')): drop them
    if root is not None:
        loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper() and p not in
                                           (model_at(root, ()) or root).model_fields))
    path = dotted(loc)
    head = ".".join(part for part in (prefix, path) if part)
    if kind == "extra_forbidden":
        parent = model_at(root, loc[:-1]) if root is not None else None
        listed = f"; allowed fields{' of ' + dotted(loc[:-1]) if loc[:-1] else ''}: {allowed_fields(parent)}" \
            if parent is not None else ""
        return f"{head}: unknown field{listed}"
    if kind == "missing":
        return f"{head}: required field is missing"
    if kind == "literal_error":
        return f"{head}: {value!r} is not one of {_literal_values(str(ctx.get('expected', '')))}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{head}: expected an integer, got {value!r}"
    if kind in ("float_type", "float_parsing"):
        return f"{head}: expected a number, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{head}: expected true/false, got {value!r}"
    if kind == "string_type":
        return f"{head}: expected a string, got {value!r}"
    if kind in ("list_type", "tuple_type"):
        return f"{head}: expected a list, got {value!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        fields = model_at(root, loc) if root is not None else None
        extra = f" with fields {allowed_fields(fields)}" if fields is not None else ""
        return f"{head}: expected a mapping{extra}, got {value!r}"
    if kind == "greater_than_equal":
        return f"{head}: {value!r} is below the minimum {ctx.get('ge')}"
    if kind == "greater_than":
        return f"{head}: {value!r} must be > {ctx.get('gt')}"
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return f"{head}: {value!r} is above the maximum {bound}"
    message = str(error.get("msg", ""))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if root is not None and model_at(root, loc) is not None and re.match(r"^[\w.\[\]]+( or [\w.\[\]]+)*: ", message):
        # a model-level check names its own field: attach it below the model's path
        return f"{head}.{message}" if head else message
    return f"{head}: {message}" if head else message
