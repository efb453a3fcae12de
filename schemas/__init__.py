"""Record schemas: pydantic models (``maskwatch.schemas.events``), their JSON Schemas (``schemas/json``)
and the
ClickHouse DDL migrations (``schemas/sql``)."""

from maskwatch.schemas.events import (
    SCHEMA_VERSION,
    Alert,
    Camera,
    CameraHealth,
    DeadLetter,
    FaceDetection,
    FrameResult,
    RuleOverrides,
    Tick,
    tick_id,
)
from maskwatch.schemas.parse import SchemaError, parse_event, validate_event

__all__ = [
    "SCHEMA_VERSION",
    "Alert",
    "Camera",
    "CameraHealth",
    "DeadLetter",
    "FaceDetection",
    "FrameResult",
    "RuleOverrides",
    "SchemaError",
    "Tick",
    "parse_event",
    "tick_id",
    "validate_event",
]
