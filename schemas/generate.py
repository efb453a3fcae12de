"""Write the JSON Schemas of every event model to ``schemas/json`` (``python -m maskwatch.schemas.generate``).

Consumers in other languages validate against these files; a test fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from maskwatch.schemas.events import EVENT_MODELS, SCHEMA_VERSION

JSON_DIR = Path(__file__).parent / "json"


def model_version(model: type[BaseModel]) -> int:
    """The contract version a model's schema file carries: its own ``schema_version`` default if it has
    one (the alert events are version 2), else the events' shared version."""
    field = model.model_fields.get("schema_version")
    default = field.default if field is not None else None
    return default if isinstance(default, int) and default > SCHEMA_VERSION else SCHEMA_VERSION


def render() -> dict[str, str]:
    """File name -> JSON text for every model."""
    files = {}
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        version = model_version(model)
        schema["$id"] = f"https://maskwatch.dev/schemas/{name}.v{version}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        files[f"{name}.v{version}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in render().items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path)
