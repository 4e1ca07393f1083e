"""The package's shape: no import cycle, no module over 400 lines, and an embedding
application's ``import gateway.middleware`` loads no listener or admin code."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not ``.__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(nodes: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level and inside functions, classes and blocks; only the
    ``if TYPE_CHECKING:`` branch is left out (it never runs)."""
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _imports(children)


def _ancestors(module: str) -> set[str]:
    """The packages below the top one that importing ``module`` runs too: a.b.c -> {a.b}."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def _targets(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports, each with the packages it runs on the way."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names if alias.name in known}
            continue
        if node.level:  # relative: one level is the importer's package, each further one goes up
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source in known:
            targets.add(source)
        targets |= {f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known}
    for target in list(targets):
        targets |= {ancestor for ancestor in _ancestors(target) if ancestor in known}
    # a package's modules importing their own package (or the module itself) is no cycle
    return targets - _ancestors(module) - {module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module-level and function-level imports)."""
    known = modules()
    return {module: _targets(module, path, known) for module, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    found = cycles(graph)
    report = "\n".join(
        "cycle: " + " ".join(component) + "".join(
            f"\n    {module} -> {', '.join(sorted(graph[module] & set(component)))}" for module in component)
        for component in found
    )
    assert not found, report


def test_cycles_are_found_through_function_level_imports() -> None:
    """The checker itself: a function-level import counts, a TYPE_CHECKING one does not."""
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "def f():\n    from . import c\n")
    assert [ast.unparse(node) for node in _imports(tree.body)] == ["import os", "import b", "from . import c"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _ancestors("gateway.revocation.intake.rfc7009") == {"gateway.revocation", "gateway.revocation.intake"}


def test_no_module_over_400_lines() -> None:
    sizes = {module: path.read_text().count("\n") for module, path in modules().items()}
    over = {module: lines for module, lines in sorted(sizes.items()) if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_the_middleware_loads_no_listener_and_no_admin_code() -> None:
    """An application that embeds the policy (``setup_tokengate``) opens no port of ours: the
    server, the forward-auth decision port and the revocation intake stay unloaded."""
    code = "import gateway.middleware, sys; print(sorted(m for m in sys.modules if m.startswith('gateway.')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = ast.literal_eval(result.stdout.strip())
    assert "gateway.middleware" in loaded
    unwanted = ("gateway.server", "gateway.forward_auth", "gateway.revocation.intake", "gateway.admin")
    assert [m for m in loaded if m in unwanted or m.startswith(tuple(f"{u}." for u in unwanted))] == []
