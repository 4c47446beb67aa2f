"""The hand-written input validator taskgate used before pydantic (shared/inputs.py as it was
at 98b001a), kept only as P6's baseline: scalar fields with bounds, nothing else allowed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import InvalidInput

Kind = Literal["int", "float", "str", "bool"]
_JSON_TYPES: dict[Kind, str] = {
    "int": "integer",
    "float": "number",
    "str": "string",
    "bool": "boolean",
}
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Field:
    """One input field. ``low``/``high`` bound numbers; ``max_length`` bounds strings."""

    kind: Kind
    default: Any = _MISSING
    low: float | None = None
    high: float | None = None
    max_length: int | None = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def check(self, name: str, value: Any) -> Any:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise _bad(name, "must be a boolean")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise _bad(name, "must be a string")
            if self.max_length is not None and len(value) > self.max_length:
                raise _bad(name, f"must be at most {self.max_length} characters")
            return value
        # Numbers: bool is an int subclass in Python but never a number here.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(name, f"must be {'an integer' if self.kind == 'int' else 'a number'}")
        if self.kind == "int" and not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer()):
                raise _bad(name, "must be an integer")
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(name, "must be a finite number")
        if self.low is not None and value < self.low:
            raise _bad(name, f"must be at least {self.low:g}")
        if self.high is not None and value > self.high:
            raise _bad(name, f"must be at most {self.high:g}")
        return float(value) if self.kind == "float" else value

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": _JSON_TYPES[self.kind]}
        if self.low is not None:
            out["minimum"] = self.low
        if self.high is not None:
            out["maximum"] = self.high
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if not self.required:
            out["default"] = self.default
        if self.description:
            out["description"] = self.description
        return out


def _bad(name: str, reason: str) -> InvalidInput:
    return InvalidInput(
        f"input.{name} {reason}", details={"field": f"input.{name}", "reason": reason}
    )


@dataclass(frozen=True, slots=True)
class InputSchema:
    """A mapping of field names to ``Field``; unknown fields are refused."""

    fields: Mapping[str, Field]

    def validate(self, data: Any) -> dict[str, Any]:
        """Return the checked input with defaults filled in, or raise ``InvalidInput``."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidInput(
                "input must be an object", details={"field": "input", "reason": "must be an object"}
            )
        for name in data:
            if name not in self.fields:
                raise _bad(str(name)[:64], "is not a field of this task")
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if name in data:
                out[name] = spec.check(name, data[name])
            elif spec.required:
                raise _bad(name, "is required")
            else:
                out[name] = spec.default
        return out

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: spec.json_schema() for name, spec in self.fields.items()},
            "required": [name for name, spec in self.fields.items() if spec.required],
            "additionalProperties": False,
        }
