"""The package's shape: no import cycle, no module using another module's private names, the folders' import
diagram in ARCHITECTURE.md equal to the real one, and the size limits (top-level names, flat modules, module and
function length, parameters)."""

import ast
import re
from pathlib import Path

import distilldift

PACKAGE = Path(distilldift.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """``(imported module, imported names)`` for every import in the file, lazy and TYPE_CHECKING ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # `from . import video`: a module, not a name
                    yield sub, []
                else:
                    yield target, [alias.name]


def _graph():
    modules = _modules()
    edges, private = {m: set() for m in modules}, set()
    for name, path in modules.items():
        for target, names in _imports(name, path, modules):
            if target in modules and target != name:
                edges[name].add(target)
                private |= {(name, target, n) for n in names if n.startswith("_") and not n.startswith("__")}
    return edges, private


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    edges, _ = _graph()
    assert len(edges) > 30  # the walker sees the package
    assert "distilldift.models.model" in edges["distilldift.models.build"]
    assert _cycles(edges) == []


def test_a_cycle_is_detected():
    """The checker itself: a hand-made cycle is found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_imports_across_modules():
    _, private = _graph()
    assert private == set()


def test_a_private_import_is_detected(tmp_path):
    """The checker itself: `from .a import _x` in a module of a package is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("_x = 1\n")
    (pkg / "b.py").write_text("from .a import _x\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    assert list(_imports("pkg.b", pkg / "b.py", modules)) == [("pkg.a", ["_x"])]


# ----------------------------------------------------------------------------------- the folders' diagram
FOUNDATION = {"errors", "files", "images", "progress", "download", "lazy", "samples"}  # imported by any folder
ARCHITECTURE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"


def _part(module: str) -> str:
    """The diagram node of a module: its subpackage, or its own name for a flat module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "distilldift"


def _part_graph(edges) -> set[tuple[str, str]]:
    return {
        (_part(a), _part(b))
        for a, targets in edges.items()
        for b in targets
        if _part(a) != _part(b) and _part(b) not in FOUNDATION and _part(a) not in ("distilldift", "__main__")
    }


def _diagram(text: str) -> set[tuple[str, str]]:
    """``A --> B`` edges of the first Mermaid block of ``text``."""
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```mermaid block"
    return set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block.group(1), re.M))


def test_architecture_diagram_is_the_import_graph():
    edges, _ = _graph()
    real, drawn = _part_graph(edges), _diagram(ARCHITECTURE.read_text(encoding="utf-8"))
    assert drawn - real == set(), "drawn in ARCHITECTURE.md but not imported"
    assert real - drawn == set(), "imported but missing from ARCHITECTURE.md's diagram"
    # the foundation imports no folder: a folder may use it without a cycle
    assert not {(a, b) for a, b in _part_graph(edges) if a in FOUNDATION}


def test_a_missing_diagram_edge_is_detected():
    """The checker itself: an import the diagram lacks, and a drawn edge nobody imports, are both seen."""
    edges = {"distilldift.tracking.track": {"distilldift.matching.points", "distilldift.errors"}}
    assert _part_graph(edges) == {("tracking", "matching")}
    assert _diagram("```mermaid\ngraph TD\n  tracking --> matching\n  viz --> tracking\n```") == {
        ("tracking", "matching"),
        ("viz", "tracking"),
    }


# ----------------------------------------------------------------------------------- size limits
MAX_TOP_LEVEL, MAX_FLAT, MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMS = 25, 12, 600, 80, 12


def _code_lines(lines: list[str], node: ast.AST) -> int:
    """Lines of code of a function: neither blank, nor comment, nor its docstring."""
    doc: set[int] = set()
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        doc = set(range(first.lineno, first.end_lineno + 1))
    code = (lines[i - 1].strip() for i in range(node.lineno, node.end_lineno + 1) if i not in doc)
    return sum(1 for s in code if s and not s.startswith("#"))


def _params(node: ast.FunctionDef) -> int:
    a = node.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)


def _oversized(package: Path):
    """``(where, what)`` of every module over the line limit and every function over the length/parameter limits.
    The CLI's commands are exempt from the parameter limit only: each option is a parameter there."""
    for f in sorted(package.rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        lines = text.splitlines()
        where = str(f.relative_to(package))
        if len(lines) > MAX_MODULE_LINES:
            yield where, f"{len(lines)} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _code_lines(lines, node) > MAX_FUNCTION_LINES:
                    yield f"{where}:{node.name}", f"{_code_lines(lines, node)} lines of code"
                if _params(node) > MAX_PARAMS and not where.startswith("cli/"):
                    yield f"{where}:{node.name}", f"{_params(node)} parameters"


def test_size_limits():
    assert list(_oversized(PACKAGE)) == []


def test_size_limit_checker(tmp_path):
    """The checker itself: a long function, a long module and a long signature are reported."""
    body = "\n".join(f"    x{i} = {i}" for i in range(80))  # + the def line: 81
    params = ", ".join(f"p{i}" for i in range(13))
    (tmp_path / "m.py").write_text(f'def long():\n    """Doc."""\n{body}\n\n\ndef wide({params}):\n    pass\n')
    (tmp_path / "big.py").write_text("\n" * 601)
    assert sorted(_oversized(tmp_path)) == [
        ("big.py", "601 lines"),
        ("m.py:long", "81 lines of code"),
        ("m.py:wide", "13 parameters"),
    ]


def test_top_level_and_flat_modules():
    assert len(distilldift.__all__) <= MAX_TOP_LEVEL, distilldift.__all__
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= MAX_FLAT, flat
    for name in distilldift.__all__:  # each resolves, to something of the library
        value = getattr(distilldift, name)
        assert name == "__version__" or value.__module__.startswith("distilldift."), name
