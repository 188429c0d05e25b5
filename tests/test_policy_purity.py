"""The policy core does no I/O: it may not import anything that does (STYLE.md item 1)."""

import ast
from pathlib import Path

import pytest

import scheduler.policy

FORBIDDEN = {"asyncio", "websockets", "multiprocessing", "socket", "time", "subprocess", "os"}
POLICY_DIR = Path(scheduler.policy.__file__).parent


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    "path", sorted(POLICY_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(POLICY_DIR))
)
def test_policy_module_imports_nothing_that_does_io(path: Path) -> None:
    assert imported_roots(path.read_text()) & FORBIDDEN == set()


def test_the_scan_sees_imports() -> None:
    assert imported_roots("import asyncio\nfrom time import monotonic\n") == {"asyncio", "time"}
