"""Module and class sizes (ARCHITECTURE.md): no module in docstore/ over ~500 lines and no
class over ~300 without a reason written at its top ("Why this is long: ...").

The import graph (layers, no cycles) is checked by ``lint-imports`` in CI; this file checks
what it cannot. ``pytest tests/test_architecture.py -s`` prints the largest of each.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "docstore"
MODULE_LINES = 500
CLASS_LINES = 300
REASON = "Why this is long:"


def _modules() -> list[tuple[Path, ast.Module, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        found.append((path, ast.parse(source), len(source.splitlines())))
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _explains(node: ast.Module | ast.ClassDef) -> bool:
    return REASON in (ast.get_docstring(node) or "")


def test_no_module_is_long_without_a_reason() -> None:
    sizes = sorted(((lines, _name(p)) for p, _, lines in _modules()), reverse=True)
    print("\nlargest modules:", ", ".join(f"{n} {lines}" for lines, n in sizes[:8]))
    long = [
        f"{_name(path)} ({lines} lines)"
        for path, tree, lines in _modules()
        if lines > MODULE_LINES and not _explains(tree)
    ]
    assert not long, f"modules over {MODULE_LINES} lines without {REASON!r} at the top: {long}"


def test_no_class_is_long_without_a_reason() -> None:
    sizes = []
    long = []
    for path, tree, _ in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                sizes.append((lines, f"{_name(path)}:{node.name}"))
                if lines > CLASS_LINES and not (_explains(node) or _explains(tree)):
                    long.append(f"{_name(path)}:{node.name} ({lines} lines)")
    sizes.sort(reverse=True)
    print("\nlargest classes:", ", ".join(f"{n} {lines}" for lines, n in sizes[:8]))
    assert not long, f"classes over {CLASS_LINES} lines without {REASON!r}: {long}"


def test_runtime_modules_do_not_import_the_tooling() -> None:
    # lint-imports checks the whole graph in CI; this keeps the one rule a reader most needs
    # (tests and benchmarks' replicas are not runtime code) in the test suite as well.
    for path, tree, _ in _modules():
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "docstore.testing"
            ):
                raise AssertionError(f"{_name(path)} imports {node.module}")
