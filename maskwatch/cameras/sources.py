"""A camera's source URL as the fetcher uses it: ``${NAME}`` placeholders filled where the flow runs.

The registry stores the URL with its placeholders, so the password stays in the environment (or a
``NAME_FILE`` secret) of the hosts that fetch, never in ClickHouse, Kafka or the dashboard.
"""

from __future__ import annotations

import re

from maskwatch.config import secret
from maskwatch.schemas.events import SOURCE_PLACEHOLDER, Camera


def resolve_source_url(camera: Camera) -> str:
    """``camera.source_url`` with every ``${NAME}`` replaced by ``NAME`` (or the file ``NAME_FILE``).

    Raises ``LookupError`` naming the variable when this host does not define it.
    """

    def fill(match: re.Match[str]) -> str:
        value = secret(match[1])
        if value is None:
            raise LookupError(f"camera {camera.id}: source URL needs ${{{match[1]}}}, which is not set")
        return value

    return SOURCE_PLACEHOLDER.sub(fill, camera.source_url)
