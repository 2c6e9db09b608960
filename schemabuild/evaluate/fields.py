"""Field specs: every scored leaf of the output model, walked from its type annotations (+ the task's overrides)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import types
import typing
from typing import Any

from pydantic import BaseModel

from schemabuild.errors import TaskError
from schemabuild.task import FieldEval, Task

COMPARATORS = ("exact", "float", "string", "date", "set", "list")


DEFAULT_FLOAT_TOLERANCE = 1e-3


@dataclasses.dataclass
class FieldSpec:
    """How one leaf (or list) of the output model is scored."""
    path: str
    """Dotted path; `[]` marks list elements (`items[].unit_price`)."""
    comparator: str
    """One of COMPARATORS."""
    optional: bool = False
    """None is an allowed value: null precision/recall are reported."""
    values: list | None = None
    """The allowed values of an enum-like field (Literal, Enum, bool): a confusion matrix is reported."""
    tolerance: float | None = None
    """Relative tolerance of float fields."""
    ordered: bool = False
    """Lists: compare in order."""
    element: str = "exact"
    """Lists: how elements are normalised before comparing (exact, string, date, float)."""


def _unwrap_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap_optional(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            inner_opt, inner = _unwrap_optional(args[0])
            return optional or inner_opt, inner
        return optional, typing.Union[tuple(args)] if args else type(None)
    return False, tp


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _kind(tp) -> tuple[str, list | None]:
    """(comparator, enum values) chosen from a (non-optional) type."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "exact", list(typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "exact", [m.value for m in tp]
    if tp is bool:
        return "exact", [True, False]
    if tp is int:
        return "exact", None
    if tp is float:
        return "float", None
    if tp is str:
        return "string", None
    if tp in (_dt.date, _dt.datetime, _dt.time):
        return "date", None
    return "exact", None


def field_specs(task_or_model, overrides: dict[str, FieldEval] | None = None) -> list[FieldSpec]:
    """Every scored field of an output model, walked from its type annotations, with the task's overrides."""
    if isinstance(task_or_model, Task):
        model, overrides, owner = task_or_model.output, task_or_model.fields, f"task {task_or_model.name!r}"
    else:
        model, owner = task_or_model, model_name(task_or_model)
    overrides = dict(overrides or {})
    specs: list[FieldSpec] = []

    def walk(m: type[BaseModel], prefix: str, parent_optional: bool) -> None:
        for name, info in m.model_fields.items():
            path = prefix + name
            optional, tp = _unwrap_optional(info.annotation)
            optional = optional or parent_optional
            if _is_model(tp):
                walk(tp, path + ".", optional)
                continue
            origin = typing.get_origin(tp)
            if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
                args = [a for a in typing.get_args(tp) if a is not Ellipsis]
                _, inner = _unwrap_optional(args[0]) if args else (False, Any)
                element = "exact" if _is_model(inner) else _kind(inner)[0]
                specs.append(FieldSpec(path, "set", optional, element=element))
                if _is_model(inner):
                    walk(inner, path + "[].", False)
                continue
            comparator, values = _kind(tp)
            specs.append(FieldSpec(path, comparator, optional, values=values))

    walk(model, "", False)
    by_path = {s.path: s for s in specs}
    for path, fe in overrides.items():
        spec = by_path.get(path)
        if spec is None:
            known = ", ".join(by_path) or "none"
            raise TaskError(f"{owner}: fields[{path!r}]: no such field (fields: {known})")
        if fe.comparator is not None:
            if fe.comparator not in COMPARATORS:
                raise TaskError(f"{owner}: fields[{path!r}].comparator {fe.comparator!r}: "
                                f"expected one of {', '.join(COMPARATORS)}")
            if fe.comparator in ("set", "list") and spec.comparator not in ("set", "list"):
                raise TaskError(f"{owner}: fields[{path!r}].comparator {fe.comparator!r}: the field is not a list")
            spec.comparator = fe.comparator
        if fe.tolerance is not None:
            if not fe.tolerance >= 0:
                raise TaskError(f"{owner}: fields[{path!r}].tolerance must be >= 0")
            spec.tolerance = fe.tolerance
        if fe.ordered:
            spec.ordered = True
            if spec.comparator == "set":
                spec.comparator = "list"
        if spec.comparator != "exact":
            spec.values = None
    for spec in specs:
        if spec.comparator == "float" and spec.tolerance is None:
            spec.tolerance = DEFAULT_FLOAT_TOLERANCE
        if spec.comparator == "list":
            spec.ordered = True
    return specs


def model_name(model) -> str:
    return getattr(model, "__name__", str(model))

