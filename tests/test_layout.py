"""The house rules a reader relies on: one import name, schemas at the bottom, no import circles, layers that
only import downwards, and one place for commands. Read from the code's own imports (every ``import`` in a
module, also inside functions), so a new arrow that breaks a rule fails here, not in review."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]
# The top-level folders the brief requires, imported as maskwatch.<name> through the links maskwatch/<name>.
MAPPED = ("flows", "inference", "dashboards", "schemas")


def _module_files() -> Iterator[tuple[str, Path]]:
    for base in ("maskwatch", *MAPPED):
        folder = REPO_ROOT / base
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if base != "maskwatch":
                parts = ["maskwatch", *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports (``from a import b``: ``a``, and ``a.b`` if a module)."""
    files = dict(_module_files())
    graph: dict[str, frozenset[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{path}: relative import; import maskwatch.<...> by its full name"
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = frozenset(m for m in found if m in files and m != name)
    return graph


def layer_of(module: str) -> str:
    """The unit a module belongs to: a subpackage (``maskwatch.store``, ``maskwatch.inference.serving``),
    the shared floor of ``maskwatch.inference``, or the package root's shared modules."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "inference":
        return ".".join(parts[:3]) if parts[2] in INFERENCE_PACKAGES else "maskwatch.inference"
    if len(parts) >= 2 and (REPO_ROOT / "maskwatch" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return "maskwatch" if len(parts) == 1 or parts[1] != "cli" else "maskwatch.cli"


INFERENCE_PACKAGES = ("models", "gpu", "serving", "evaluation", "training", "cli")
# Bottom to top: a unit may import only units on its own line or below it. `cli` modules sit above what
# they run; the root command assembles them all by name (maskwatch/cli.py imports none of them).
LAYERS: list[set[str]] = [
    {"maskwatch.schemas"},
    {"maskwatch"},  # config, logs, metrics, kafka, topics, netpolicy, imagelimits, shutdown
    {"maskwatch.store", "maskwatch.inference"},
    {"maskwatch.inference.models"},
    {"maskwatch.inference.gpu"},
    {"maskwatch.inference.serving"},
    {"maskwatch.inference.evaluation"},
    {"maskwatch.inference.training"},
    {"maskwatch.snapshots"},
    {"maskwatch.cameras", "maskwatch.notify"},
    {"maskwatch.flows"},
    {"maskwatch.dashboards"},
    {"maskwatch.devservices", "maskwatch.inference.cli"},
    {"maskwatch.cli"},
]


def _rank(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{unit} is in no layer of tests/test_layout.py: say where it sits")


def test_every_module_sits_in_a_layer_and_imports_only_downwards() -> None:
    upward = []
    for module, imported in import_graph().items():
        here = _rank(layer_of(module))
        for target in imported:
            if target == "maskwatch":
                continue
            there = _rank(layer_of(target))
            if there > here:
                upward.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_schemas_import_nothing_of_the_project_but_themselves() -> None:
    outside = {
        f"{module} -> {target}"
        for module, imported in import_graph().items()
        if module.startswith("maskwatch.schemas")
        for target in imported
        if not target.startswith("maskwatch.schemas") and target != "maskwatch"
    }
    assert not outside


def test_no_import_circles() -> None:
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles


def test_the_mapped_folders_are_the_packages_maskwatch_imports() -> None:
    for name in MAPPED:
        link = REPO_ROOT / "maskwatch" / name
        assert link.is_symlink() and link.resolve() == (REPO_ROOT / name).resolve()
    import maskwatch.flows
    import maskwatch.schemas

    assert Path(maskwatch.flows.__file__).resolve().parent == REPO_ROOT / "flows"
    assert Path(maskwatch.schemas.__file__).resolve().parent == REPO_ROOT / "schemas"


def test_commands_live_in_cli_modules_only() -> None:
    """One rule: a click command is defined in the ``cli.py`` of the package it runs (bench/ has its own
    ``python -m`` entry points and is not installed)."""
    elsewhere = []
    for module, path in _module_files():
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for deco in node.decorator_list:
                    text = ast.unparse(deco)
                    if "click.command" in text or "click.group" in text or ".command(" in text:
                        elsewhere.append(f"{module}.{node.name}")
    assert not elsewhere, elsewhere


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("maskwatch-*.whl")
    return built


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["maskwatch"]
    assert {n.split("/")[0] for n in names} == {"maskwatch", dist_info}
    # The mapped folders arrive as real files, with their data (migrations, JSON Schemas).
    for member in ("maskwatch/flows/dataflow.py", "maskwatch/inference/serving/engine.py",
                   "maskwatch/dashboards/app.py", "maskwatch/schemas/events.py",
                   "maskwatch/schemas/sql/001_init.sql", "maskwatch/schemas/json/tick.v1.json"):
        assert member in names
