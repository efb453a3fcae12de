"""Decode and validate events with errors that name the offending field."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from maskwatch.schemas.events import model_name

M = TypeVar("M", bound=BaseModel)


class SchemaError(ValueError):
    """A payload that does not match its schema; the message names each bad field."""

    def __init__(self, model: str, problems: list[str]):
        self.model = model
        self.problems = problems
        super().__init__("; ".join(problems))


def _describe(name: str, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in (name, *item["loc"]))
        message = item["msg"]
        problems.append(f"{where}: {message[:1].lower()}{message[1:]}")
    return problems


def parse_event(model: type[M], payload: bytes | str) -> M:
    """``payload`` (JSON) as ``model``, or ``SchemaError`` such as "tick.scheduled_at: field required"."""
    name = model_name(model)
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(name, [f"{name}: not valid JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise SchemaError(name, [f"{name}: expected a JSON object, got {type(data).__name__}"])
    return validate_event(model, data)


def validate_event(model: type[M], data: dict[str, object]) -> M:
    name = model_name(model)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(name, _describe(name, exc)) from None
