"""Print the import cycles inside the monoocc_ros package (module-level and function-level imports).

Usage: python scripts/import_graph.py   (exit 1 when there is a cycle)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "monoocc_ros"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in modules}
    return out


def main() -> int:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph = {m: imports(p, modules) - {m} for m, p in files.items()}
    graph = {m: {d for d in deps if not m.startswith(d + ".") and d != "monoocc_ros"} for m, deps in graph.items()}
    cycles, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node) :]
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                cycles.append([*cycle, node])
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*stack, node])

    for m in sorted(graph):
        visit(m, [])
    for c in cycles:
        print(" -> ".join(c))
    print(f"{len(graph)} modules, {sum(len(v) for v in graph.values())} imports, {len(cycles)} cycle(s)")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
