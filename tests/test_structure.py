"""The package's shape: no import cycles between modules (imports inside functions count too),
module sizes stay readable."""

from __future__ import annotations

import ast
from pathlib import Path

import helpers

PACKAGE = Path(helpers.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules, top_level_only: bool = False) -> set[str]:
    """helpers.* modules ``name`` imports: anywhere in it (an import inside a function is a
    dependency all the same), or only those imported when ``name`` is imported. Importing a
    module of a package runs the package's ``__init__`` first, so that is an import too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text())
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.startswith("helpers"):
                subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
                # ``from . import phantoms`` imports the module phantoms, not the package's names
                out.update(subs if len(subs) == len(node.names) else {base, *subs})
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("helpers"))
    for m in list(out):
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(2, len(parts)))   # helpers.data for helpers.data.specs
    return out


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    # ``python -m`` entry points: no module imports them, so they close no cycle
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}
    return {name: {m for m in _imports(path, name, modules, top_level_only)
                   if m in modules and m != name and not name.startswith(m + ".")}   # its own package: loaded
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` meets, each as the path that closes it."""
    state: dict[str, int] = {}
    found = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]], "the walk finds a cycle"


def test_no_import_cycles_between_packages_either():
    """With each package (data/, weights/) as one node, as a reader sees the code: no module
    outside a package imports it while the package imports that module back."""
    def node(m: str) -> str:
        return ".".join(m.split(".")[:2])   # helpers.data.specs -> helpers.data
    graph: dict[str, set[str]] = {}
    for name, deps in import_graph().items():
        graph.setdefault(node(name), set()).update(node(d) for d in deps if node(d) != node(name))
    assert {"helpers.data", "helpers.weights"} <= set(graph)
    found = cycles(graph)
    assert not found, found


def test_the_graph_sees_imports():
    """The cycle test above can fail: the graph holds the imports a module really makes."""
    graph = import_graph()
    assert "helpers.models" in graph["helpers.params"]
    assert "helpers.weights" in graph["helpers.models"]
    assert "helpers.data" in graph["helpers.training"]
    # an import inside a function counts: build_book reads the records lazily
    assert "helpers.records" in graph["helpers.book"] and "helpers.records" not in import_graph(True)["helpers.book"]
    # a module of a package brings the package's __init__ with it
    assert {"helpers.data", "helpers.data.specs"} <= graph["helpers.data.prepared"] | {"helpers.data"}
    assert "helpers.data" in graph["helpers.training"] and "helpers.params" in graph["helpers.data.specs"]


MAX_MODULE_LINES = 700  # a module a newcomer reads in one sitting


def test_no_module_is_over_700_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes and max(sizes.values()) > 50  # the sizes were read
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def _imports_torch_at_top(path: Path) -> bool:
    for node in ast.parse(path.read_text()).body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(n.split(".")[0] in ("torch", "torchvision", "timm") for n in names):
            return True
    return False


def test_the_experiment_layer_imports_no_torch():
    # What the Snakefile parses with: every dry run and every cluster job imports it.
    graph = import_graph(top_level_only=True)
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    seen, todo = set(), ["helpers.experiment", "helpers.workflow", "helpers.runner", "helpers.records"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    assert "helpers.models" in seen and "helpers.params" in seen  # the walk follows imports
    heavy = sorted(n for n in seen if _imports_torch_at_top(paths[n]))
    assert not heavy, f"imported when the Snakefile is parsed, and they import torch: {heavy}"
    assert _imports_torch_at_top(paths["helpers.training"])  # the check can see a torch import


def test_every_notebook_cell_has_an_id():
    """nbformat 4.5 cells carry ids; one without makes papermill warn on every run (and nbformat
    will refuse it), so a cell pasted in by hand is caught here."""
    import json

    for path in sorted(Path("notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        missing = [i for i, cell in enumerate(nb["cells"]) if "id" not in cell]
        assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5) and not missing, f"{path}: cells {missing} have no id"
