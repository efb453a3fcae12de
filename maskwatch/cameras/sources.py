"""A camera's source URL as the fetcher uses it: ``${NAME}`` placeholders filled where the flow runs.

The registry stores the URL with its placeholders, so the password stays in the environment (or a
``NAME_FILE`` secret) of the hosts that fetch, never in ClickHouse, Kafka or the dashboard.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from maskwatch.config import secret
from maskwatch.schemas.events import PLACEHOLDER_PREFIX, SOURCE_PLACEHOLDER, Camera
from maskwatch.schemas.redaction import MASK


def resolve_source_url(camera: Camera) -> tuple[str, list[str]]:
    """``camera.source_url`` with every ``${CAMERA_...}`` replaced by that variable (or the file its
    ``_FILE`` twin names), and the values filled in, so error texts can mask them wherever they appear.

    Raises ``LookupError`` naming the variable when this host does not define it; only ``CAMERA_*``
    variables are ever read (the schema refuses other placeholders, this checks again for rows written
    around it).
    """
    values: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match[1]
        if not name.startswith(PLACEHOLDER_PREFIX):
            raise LookupError(f"camera {camera.id}: placeholder ${{{name}}} is not a {PLACEHOLDER_PREFIX}* "
                              "variable; not filled")
        value = secret(name)
        if value is None:
            raise LookupError(f"camera {camera.id}: source URL needs ${{{name}}}, which is not set")
        values.append(value)
        return value

    return SOURCE_PLACEHOLDER.sub(fill, camera.source_url), values


def mask_values(text: str, values: list[str]) -> str:
    """``text`` with every filled-in secret masked, as given and percent-encoded (how a URL carries it)."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 3:  # shorter values would mask ordinary text; they are no secret worth the name
            for form in {value, quote(value, safe=""), quote(value)}:
                text = text.replace(form, MASK)
    return text
