"""The package's import structure: no import cycle, and no module using another module's private names."""

import ast
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
    assert "distilldift.hub" in edges["distilldift.model"] and "distilldift.model" in edges["distilldift.factory"]
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
