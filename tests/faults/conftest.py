"""Fault-injection suite: each test breaks one thing under a running flow (real broker, store, models,
loopback only) and checks that nothing is lost or duplicated, nothing crashes, and the expected health
and dead-letter records appear. Each test records its figures (``fault_figures``); they are printed in
pytest's terminal summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

_FIGURES: list[dict[str, object]] = []


@pytest.fixture
def fault_figures(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """``fault_figures(fault=..., recovery_s=..., rows=..., duplicates=...)``: one summary line."""

    def record(**figures: object) -> None:
        row = {"test": request.node.name, **figures}
        _FIGURES.append(row)
        request.node.user_properties.append(("fault_figures", json.dumps(row, default=str)))
        print("FAULT FIGURES", json.dumps(row, default=str))

    yield record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for row in _FIGURES:
        terminalreporter.write_line(json.dumps(row, default=str))
