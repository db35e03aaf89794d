"""The shape of the code, checked: small modules, no import cycles, and worker processes that import
only what answering a hit needs (docs/architecture.md describes the layout)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ocspproxy"
MAX_LINES = 360


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ocspproxy modules path imports at import time (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ocspproxy"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                    else node.module
                )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ocspproxy"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


def test_no_module_imports_itself_back() -> None:
    graph = {_module(p): _imports(p) - {_module(p)} for p in PACKAGE.rglob("*.py")}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                seen.add(nxt)
                walk(nxt, [*path, nxt], seen)

    for module in sorted(graph):
        walk(module, [module], {module})
    assert cycles == []


def test_a_worker_process_imports_no_engine() -> None:
    """A worker answers hits: no aiohttp, no cache, store, upstream or certificate code, and no
    Redis (only the main process talks to the fleet's shared store)."""
    code = (
        "import json, sys; import ocspproxy.workers.child; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'redis', 'ocspproxy')))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = json.loads(run.stdout)
    assert not [m for m in loaded if m.startswith(("aiohttp", "redis"))], loaded
    engine = (
        "ocspproxy.cache", "ocspproxy.store", "ocspproxy.upstream", "ocspproxy.certs", "ocspproxy.app",
        "ocspproxy.shared",
    )  # fmt: skip
    assert not [m for m in loaded if m.startswith(engine)], loaded
    assert "ocspproxy.serve.hits" in loaded and "ocspproxy.serve.fastpath" in loaded
