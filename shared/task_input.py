"""Task input: one pydantic v2 model per task type, checked on the gateway and on the worker.

A task declares its input as a model (a ``TaskInput`` subclass, or any pydantic model that
refuses unknown fields)::

    class ReportOptions(TaskInput):
        format: Literal["csv", "json"]
        header: bool = True

    class ReportInput(TaskInput):
        rows: int = Field(ge=1, le=100_000)
        columns: list[str] = Field(min_length=1, max_length=20)
        options: ReportOptions

    @task("reports.build", schema=ReportInput)
    def build(ctx, rows: int, columns: list[str], options: ReportOptions): ...

Why a model rather than the function's annotated signature: the input is a public contract (the
API document, the page's forms), and a model states it in one place that the gateway can import
without the task's code running, nests (``options`` above is a model too), carries titles,
descriptions and bounds, and is the thing pydantic validates fastest. A signature would tie the
contract to a function's parameters (``ctx`` and all) and be less explicit about what is public.

The rules are pydantic's in strict JSON mode, so that they are JSON Schema's: a whole number for
``int`` (``5`` or ``5.0``, as JSON Schema counts integers; not ``"5"``, not ``true``), a number
for ``float``, ``true``/``false`` for ``bool``, a string for ``str``, an
enum's value for an enum; unknown fields are refused at every level. A missing or ``null``
input means every field takes its default.

- The gateway (and a Python producer) calls ``validate``: the input as JSON values, defaults
  filled in, which is what the Celery message carries.
- The worker calls ``arguments`` on the message's input: the same check again (the broker is
  not trusted either), and the function's keyword arguments as the model holds them (a nested
  model as its instance, an enum as its member).
- ``json_schema`` is the model's JSON Schema with every ``$ref`` inlined, so that it can be
  embedded anywhere (``GET /api/task-types``, the OpenAPI document, the page's forms).

A 422 names the field by its path: ``input.options.format``, ``input.columns[2]``; its
``details.errors`` lists every problem found (at most ``MAX_ERRORS``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ConfigError, InvalidInput

MAX_ERRORS = 20
# Levels of objects and lists an input may have (a model deeper than this cannot be used).
MAX_DEPTH = 32


class TaskInput(BaseModel):
    """The base of a task's input model: unknown fields refused, instances frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoInput(TaskInput):
    """The input of a task that takes none."""


def field_path(loc: tuple[int | str, ...], root: str = "input") -> str:
    """``("options", "format")`` -> ``input.options.format``; list indexes in brackets."""
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _reason(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this task"
    msg = str(error["msg"])
    for said, says in (("Input should be", "must be"), ("Input should have", "must have")):
        if msg.startswith(said):
            return says + msg[len(said) :]
    return msg[:1].lower() + msg[1:]


def invalid_input(exc: ValidationError) -> InvalidInput:
    """pydantic's errors as the contract's 422: the first one's field and reason, and all."""
    errors = [
        {"field": field_path(tuple(e["loc"])), "reason": _reason(e)}
        for e in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]
    ]
    first = errors[0]
    return InvalidInput(
        f"{first['field']} {first['reason']}",
        details={"field": first["field"], "reason": first["reason"], "errors": errors},
    )


def _not_an_object() -> InvalidInput:
    return InvalidInput(
        "input must be an object", details={"field": "input", "reason": "must be an object"}
    )


def _integral(value: Any, depth: int = 0) -> Any:
    """``value`` with each float that is a whole number (``5.0``) as an int: JSON Schema counts
    it an integer, and pydantic's strict mode would not (a float field takes the int). Deeper
    than ``MAX_DEPTH`` is ``InvalidInput``."""
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() and abs(value) <= 2**53 else value
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise InvalidInput(
                f"input is nested more than {MAX_DEPTH} levels deep",
                details={"field": "input", "reason": f"must be at most {MAX_DEPTH} levels deep"},
            )
        if kind is dict:
            return {k: _integral(v, depth + 1) for k, v in value.items()}
        return [_integral(v, depth + 1) for v in value]
    return value


def _json(data: Any) -> bytes:
    try:
        return orjson.dumps(data, default=_model_json)
    except TypeError as exc:  # a value JSON cannot carry (a Python producer's), or too deep
        raise InvalidInput(
            f"input cannot be sent as JSON: {exc}",
            details={"field": "input", "reason": f"must be JSON values ({exc})"},
        ) from None


def _model_json(value: Any) -> Any:
    """orjson's fallback: a model instance given as a value (a Python producer's
    ``report.delay(options=ReportOptions(format="csv"))``) as its JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each ``{"$ref": "#/$defs/X"}`` replaced by ``X`` itself (a recursive
    model, which cannot be inlined, is a ``ConfigError``)."""
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref[len("#/$defs/") :]
                if name in seen:
                    raise ConfigError(f"input model {name} refers to itself: not supported")
                target = walk(copy.deepcopy(defs[name]), (*seen, name))
                target.pop("title", None)  # the class's name; the property's name says more
                rest = {k: walk(v, seen) for k, v in node.items() if k != "$ref"}
                return {**target, **rest}
            return {k: walk(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        return node

    out = walk(schema, ())
    assert isinstance(out, dict)
    return out


def _closed_objects(schema: Any, task: str) -> None:
    """Every object of the schema with properties refuses unknown ones, or ``ConfigError``
    (pydantic's default is to drop them silently)."""
    if isinstance(schema, dict):
        closable = schema.get("type") == "object" and isinstance(schema.get("properties"), dict)
        if closable and schema.get("additionalProperties") is not False:
            raise ConfigError(
                f"task {task!r}: input model {schema.get('title', '')} allows unknown "
                "fields: subclass TaskInput, or set model_config = ConfigDict(extra='forbid')"
            )
        for value in schema.values():
            _closed_objects(value, task)
    elif isinstance(schema, list):
        for value in schema:
            _closed_objects(value, task)


@dataclass(frozen=True, slots=True)
class InputModel:
    """A task's input model, with what the gateway, the worker and the docs need of it."""

    model: type[BaseModel]
    schema: dict[str, Any] = field(compare=False)

    @classmethod
    def of(cls, model: Any, task: str = "") -> InputModel:
        """Check ``model`` (a pydantic model class) at registration; ``ConfigError`` if not."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(
                f"task {task!r}: schema must be a pydantic model class (a TaskInput subclass), "
                f"not {type(model).__name__}"
            )
        schema = inline_refs(model.model_json_schema())
        _closed_objects(schema, task)
        return cls(model, schema)

    def _model(self, data: Any) -> BaseModel:
        if data is None:
            data = {}
        elif not isinstance(data, dict):
            raise _not_an_object()
        # The model's compiled validator (the documented ``__pydantic_validator__``), as
        # ``model_validate_json`` calls it, without that wrapper's cost (bench/p6_validation.py).
        check = self.model.__pydantic_validator__.validate_json
        try:
            instance = check(_json(data), strict=True)
        except ValidationError as exc:
            if not any(e["type"] == "int_type" for e in exc.errors()):
                raise invalid_input(exc) from None
            # A whole float (5.0) where an int is due counts as an integer, as in JSON Schema:
            # checked again with those as ints (only on this path, so valid input pays nothing).
            try:
                instance = check(_json(_integral(data)), strict=True)
            except ValidationError as again:
                raise invalid_input(again) from None
        assert isinstance(instance, BaseModel)
        return instance

    def validate(self, data: Any) -> dict[str, Any]:
        """The checked input as JSON values with defaults filled in, or ``InvalidInput``."""
        out = self.model.__pydantic_serializer__.to_python(self._model(data), mode="json")
        assert isinstance(out, dict)
        return out

    def arguments(self, data: Any) -> dict[str, Any]:
        """The task function's keyword arguments for ``data``, checked (``InvalidInput``)."""
        instance = self._model(data)
        return {name: getattr(instance, name) for name in type(instance).model_fields}

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the input, ``$ref``-free (a copy: callers may change it)."""
        return copy.deepcopy(self.schema)
