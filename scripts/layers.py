"""Import layers, circles and forbidden edges of taskgate's packages, read with ``ast``.

    python scripts/layers.py [--bench] [--modules] [--root DIR] [--packages gateway,worker,...]

Every ``import x`` and ``from x import y`` between the packages counts, of three kinds: at
module level (run on import), inside a function (``lazy``: run on first call) and under
``if TYPE_CHECKING:`` (``typing``: seen by mypy only). The last two are listed on their own,
but a circle is a circle whatever its kind: a lazy import only hides it from the interpreter.

It prints the layers of the sub-packages from top to bottom (a unit imports only units below
it; units of one circle share a line), the import circles between modules and between
sub-packages (strongly connected components of more than one node), and the forbidden edges:
gateway and worker never import each other, shared imports neither, and shared does not import
aiohttp, celery or kombu at module level; client imports none of the three (gateway's CLI
imports it). It exits 1 if there is a circle or a forbidden edge.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "worker", "shared", "client")
KINDS = ("module", "lazy", "typing")
# Neither of the two sides may reach into the other; both stand on shared. The client (of a
# remote gateway) stands on none of them: only the CLI in gateway may import it.
FORBIDDEN_PACKAGES = {
    "gateway": {"worker"},
    "worker": {"gateway", "client"},
    "shared": {"gateway", "worker", "client"},
    "client": {"gateway", "worker", "shared"},
}
# shared is imported by both sides: it must not pull in either side's framework on import
# (kombu is Celery's transport and most of its import time).
SHARED_MUST_NOT_IMPORT = ("aiohttp", "celery", "kombu")


@dataclass(frozen=True, order=True)
class Edge:
    """One import statement: ``src`` imports ``dst`` (a module of ours, or an outside one)."""

    src: str
    dst: str
    kind: str
    line: int

    def __str__(self) -> str:
        suffix = "" if self.kind == "module" else f", {self.kind}"
        return f"{self.src} -> {self.dst} (line {self.line}{suffix})"


@dataclass
class Report:
    """What ``check`` found; ``ok`` is False on any circle or forbidden edge."""

    modules: list[str]
    edges: list[Edge]
    external: list[Edge]
    units: dict[str, str]
    module_circles: list[list[str]] = field(default_factory=list)
    unit_circles: list[list[str]] = field(default_factory=list)
    forbidden: list[tuple[Edge, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.module_circles or self.unit_circles or self.forbidden)

    def unit_edges(self) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {unit: set() for unit in self.units.values()}
        for edge in self.edges:
            a, b = self.units[edge.src], self.units[edge.dst]
            if a != b:
                graph[a].add(b)
        return graph


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``: dotted name -> file."""
    found: dict[str, Path] = {}
    for package in packages:
        base = root / package
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if all(part.isidentifier() for part in parts):
                found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Each import statement with its kind (module, lazy or typing)."""
    stack: list[tuple[ast.AST, str]] = [(tree, "module")]
    while stack:
        node, kind = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, "typing") for child in node.body)
            stack.extend((child, kind) for child in node.orelse)
            continue
        inner = kind
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "typing" if kind == "typing" else "lazy"
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def read_imports(
    module: str, path: Path, known: Mapping[str, Path]
) -> tuple[list[Edge], list[Edge]]:
    """The imports of one module: (edges to our modules, edges to outside modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    ours: list[Edge] = []
    outside: list[Edge] = []
    for node, kind in _imports(tree):
        # (what the statement names, what it imports when that is not one of ours)
        targets: list[tuple[str, str]] = []
        if isinstance(node, ast.Import):
            targets = [(alias.name, alias.name) for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([base] if base else [])])
            # ``from a import b`` imports module ``a.b`` when there is one, else a name of ``a``.
            targets = [(f"{base}.{alias.name}", base) for alias in node.names]
        for target, library in targets:
            resolved = _resolve(target, known)
            if resolved is None:
                outside.append(Edge(module, library, kind, node.lineno))
            elif resolved != module:
                ours.append(Edge(module, resolved, kind, node.lineno))
    return ours, outside


def unit_of(module: str, known: Mapping[str, Path]) -> str:
    """The sub-package a module belongs to, for the layers.

    A package with sub-packages is split: each sub-package and each top-level module is a unit
    (``gateway.tasks``, ``gateway.app``), its ``__init__`` is the package's own unit. A flat
    package (``shared``, ``worker``) is one unit.
    """
    top, *rest = module.split(".")
    has_subpackages = any(
        name.startswith(f"{top}.") and known[name].name == "__init__.py" for name in known
    )
    if not rest or not has_subpackages:
        return top
    return f"{top}.{rest[0]}"


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layers(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Units by height, top first: a unit sits one above the highest unit it imports.

    The units of one circle are merged into one node (joined with ``/`` on output).
    """
    group = {node: node for node in graph}
    for component in circles(graph):
        name = " / ".join(component)
        for member in component:
            group[member] = name
    dag: dict[str, set[str]] = {name: set() for name in group.values()}
    for node, targets in graph.items():
        for target in targets:
            if group[target] != group[node]:
                dag[group[node]].add(group[target])
    height: dict[str, int] = {}

    def measure(node: str) -> int:
        if node not in height:
            height[node] = 1 + max((measure(t) for t in dag[node]), default=-1)
        return height[node]

    for node in dag:
        measure(node)
    rows: dict[int, list[str]] = defaultdict(list)
    for node, h in height.items():
        rows[h].append(node)
    return [sorted(rows[h]) for h in sorted(rows, reverse=True)]


def _forbidden(edges: Iterable[Edge], external: Iterable[Edge]) -> list[tuple[Edge, str]]:
    out = []
    for edge in edges:
        a, b = edge.src.split(".")[0], edge.dst.split(".")[0]
        if b in FORBIDDEN_PACKAGES.get(a, ()):
            out.append((edge, f"{a} must not import {b}"))
    for edge in external:
        lib = edge.dst.split(".")[0]
        shared = edge.src.split(".")[0] == "shared"
        if shared and edge.kind == "module" and lib in SHARED_MUST_NOT_IMPORT:
            out.append((edge, f"shared must not import {lib} at module level"))
    return sorted(out)


def check(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> Report:
    """Read every module of ``packages`` under ``root`` and analyse its import graph."""
    known = find_modules(root, packages)
    edges: list[Edge] = []
    external: list[Edge] = []
    for module, path in known.items():
        ours, outside = read_imports(module, path, known)
        edges += ours
        external += outside
    report = Report(
        modules=sorted(known),
        edges=sorted(set(edges)),
        external=sorted(set(external)),
        units={module: unit_of(module, known) for module in known},
    )
    graph: dict[str, set[str]] = {module: set() for module in known}
    for edge in report.edges:
        graph[edge.src].add(edge.dst)
    report.module_circles = circles(graph)
    report.unit_circles = circles(report.unit_edges())
    report.forbidden = _forbidden(report.edges, report.external)
    return report


def module_layers(report: Report) -> list[list[str]]:
    graph: dict[str, set[str]] = {module: set() for module in report.modules}
    for edge in report.edges:
        graph[edge.src].add(edge.dst)
    return layers(graph)


def render(report: Report, show_modules: bool = False) -> str:
    """The report as text."""
    by_kind = {kind: [e for e in report.edges if e.kind == kind] for kind in KINDS}
    packages = sorted({m.split(".")[0] for m in report.modules})
    lines = [
        f"import graph of {', '.join(packages)}: {len(report.modules)} modules, "
        f"{len(report.edges)} imports between them ({len(by_kind['module'])} at module level, "
        f"{len(by_kind['lazy'])} in functions, {len(by_kind['typing'])} under TYPE_CHECKING)",
        "",
        "layers, top to bottom (each imports only what is below it):",
    ]
    unit_rows = layers(report.unit_edges())
    lines += [f"  {len(unit_rows) - i:2d}  {' | '.join(row)}" for i, row in enumerate(unit_rows)]
    if show_modules:
        lines += ["", "module layers, top to bottom:"]
        rows = module_layers(report)
        lines += [f"  {len(rows) - i:2d}  {' | '.join(row)}" for i, row in enumerate(rows)]
    for kind, title in (("lazy", "in functions"), ("typing", "under TYPE_CHECKING")):
        lines += ["", f"imports {title}: {len(by_kind[kind])}"]
        lines += [f"  {edge}" for edge in by_kind[kind]]
    for title, found, inner in (
        ("modules", report.module_circles, lambda e: (e.src, e.dst)),
        ("sub-packages", report.unit_circles, lambda e: (report.units[e.src], report.units[e.dst])),
    ):
        lines += ["", f"circles between {title}: {len(found)}"]
        for component in found:
            members = set(component)
            lines.append(f"  {' <-> '.join(component)}")
            for edge in report.edges:
                a, b = inner(edge)
                if a != b and a in members and b in members:
                    lines.append(f"      {edge}")
    lines += ["", f"forbidden edges: {len(report.forbidden)}"]
    lines += [f"  {edge}: {why}" for edge, why in report.forbidden]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the project's folder")
    parser.add_argument("--packages", help="comma-separated packages (default: %(default)s)",
                        default=",".join(PACKAGES))  # fmt: skip
    parser.add_argument("--bench", action="store_true", help="include bench/ too")
    parser.add_argument("--modules", action="store_true", help="print module layers too")
    args = parser.parse_args(argv)
    packages = [p for p in args.packages.split(",") if p]
    if args.bench:
        packages.append("bench")
    report = check(args.root, packages)
    print(render(report, args.modules))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
