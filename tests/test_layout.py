"""The package's layout rules: few loose modules, short functions, imports that only point down the layers.

Layers, lowest first (a module may import its own layer and the ones below, never one above):

    errors, devices, files, cividis, drawing < data < anatomy < diffusion < models < pipelines < review < evaluation
    < training < cli

``assets`` (shipped files) sits with the lowest layer; ``__init__`` and ``__main__`` may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spinesegdiff"
LAYERS = {
    "errors": 0, "devices": 0, "files": 0, "assets": 0, "cividis": 0, "drawing": 0,
    "data": 1, "anatomy": 2, "diffusion": 3, "models": 4, "pipelines": 5, "review": 6, "evaluation": 7,
    "training": 8, "cli": 9,
}
MAX_LOOSE_MODULES = 8
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_rooms(tree: ast.AST) -> set[str]:
    rooms = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.level == 0 else []
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "spinesegdiff" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def test_no_more_than_eight_modules_loose_at_the_top() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_every_room_has_a_layer() -> None:
    rooms = {_room(p) for p in _modules()} - {"__init__", "__main__"}
    assert rooms <= LAYERS.keys(), sorted(rooms - LAYERS.keys())


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    room = _room(path)
    if room in ("__init__", "__main__"):
        return
    upward = sorted(r for r in _imported_rooms(ast.parse(path.read_text("utf-8"))) if LAYERS.get(r, -1) > LAYERS[room])
    assert not upward, f"{room} (layer {LAYERS[room]}) imports {upward}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_longer_than_eighty_lines(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_the_layer_check_sees_an_upward_import() -> None:
    tree = ast.parse("from spinesegdiff.training.loop import train\nimport spinesegdiff.cli\n")
    assert _imported_rooms(tree) == {"training", "cli"}
