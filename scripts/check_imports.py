"""Fail on import circles inside seedance/ and on imports that point up the layers.

Why: a circle makes import order matter and hides which half depends on which; an upward import (the
sans-I/O protocol, the engine or a model runner reaching into the aiohttp server or sessions) ties the
layers that should stand alone. Every import counts, including ones inside functions or under
``TYPE_CHECKING``: a deferred import is still a dependency, only a hidden one.

Usage: ``python scripts/check_imports.py [ROOT]`` (ROOT defaults to the repo's seedance/); exits 1 and
lists each problem, or prints a one-line summary and exits 0.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# Packages (under seedance/) that must not import the ones listed against them.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "protocol": ("server", "sessions", "engine", "models", "observability", "client", "bench"),
    "engine": ("server", "sessions", "client", "bench"),
    "models": ("server", "sessions", "engine", "client", "bench"),
    "observability": ("server", "client", "bench"),
    "sessions": ("server", "client", "bench"),
    "serving": ("server", "client", "bench"),  # one request's life above the engine, for every transport
    "client": ("server", "sessions", "engine", "models", "bench"),  # a client talks the protocol only
}
# Third-party modules a package must not import (the I/O-free layers).
FORBIDDEN_EXTERNAL: dict[str, tuple[str, ...]] = {
    "protocol": ("aiohttp", "asyncio", "socket", "websockets"),
    "observability": ("aiohttp",),
}


def module_name(root: Path, path: Path) -> str:
    """The dotted name of ``path`` (``seedance/server/transports/ws.py`` → ``seedance.server.transports.ws``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.Module, name: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(every module each statement names, plus ``from pkg import x`` candidates pkg.x; the statements'
    own modules alone), absolute, resolved from relative, wherever the statement sits."""
    candidates: set[str] = set()
    stated: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            stated.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            stated.add(target)
            # ``from pkg import mod`` imports the submodule pkg.mod when there is one.
            candidates.update(f"{target}.{alias.name}" for alias in node.names)
    return stated | candidates, stated


def build_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the modules under ``root``, each module's imported modules) for every .py file."""
    sources = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    raw: dict[str, set[str]] = {}
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets, raw[name] = imports_of(tree, name, path.name == "__init__.py")
        # a package's __init__ that a submodule imports through is not a circle of its own making
        graph[name] = {t for t in targets if t in sources and t != name and not name.startswith(t + ".")}
    return graph, raw


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through ``component`` (start → … → start), for a readable report."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [start]
                    back = node
                    while back != start:
                        path.append(back)
                        back = previous[back]
                    return [start, *reversed(path[1:]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(raw: dict[str, set[str]], top: str) -> list[str]:
    problems = []
    for name, targets in sorted(raw.items()):
        layer = layer_of(name)
        banned = {f"{top}.{b}" for b in FORBIDDEN.get(layer, ())}
        external = FORBIDDEN_EXTERNAL.get(layer, ())
        for target in sorted(targets):
            if any(target == b or target.startswith(b + ".") for b in banned):
                problems.append(f"upward import: {name} imports {target}")
            elif any(target == e or target.startswith(e + ".") for e in external):
                problems.append(f"I/O import in {layer}/: {name} imports {target}")
    return problems


def check(root: Path) -> list[str]:
    graph, raw = build_graph(root)
    problems = [" -> ".join(cycle_path(graph, c)) for c in find_cycles(graph)]
    problems = [f"import circle: {p}" for p in problems]
    return problems + layer_violations(raw, root.name)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "seedance"
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} import problem(s) in {root}", file=sys.stderr)
        return 1
    print(f"imports ok: no circles, no upward imports in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
