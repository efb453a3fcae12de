"""A training run's state on disk after each epoch, so an interrupted build resumes where it stopped.

The file holds the recipe it belongs to: a checkpoint of another recipe (changed epochs, learning rate,
base model, ...) is ignored and replaced, never resumed from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Checkpoint:
    def __init__(self, path: Path, recipe: dict[str, Any]) -> None:
        self.path = path
        self.recipe = json.loads(json.dumps(recipe, sort_keys=True, default=str))

    def load(self) -> dict[str, Any] | None:
        """The saved state when there is one for this recipe, else None."""
        import torch

        if not self.path.is_file():
            return None
        try:
            state: dict[str, Any] = torch.load(self.path, weights_only=False)
        except Exception as exc:  # a file cut short by the interruption itself
            log.warning("checkpoint %s unreadable (%s); starting over", self.path, exc)
            return None
        if state.get("recipe") != self.recipe:
            log.info("checkpoint %s is of another recipe; starting over", self.path)
            return None
        log.info("resuming from checkpoint %s", self.path)
        return state

    def save(self, state: dict[str, Any]) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "recipe": self.recipe}, tmp)
        os.replace(tmp, self.path)  # never a half-written checkpoint under the name

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
