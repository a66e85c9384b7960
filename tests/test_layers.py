"""The package's layers import one way (DESIGN.md), checked on the source.

* the **core** of ``zsrl/`` imports nothing from ``zsrl.agents``, ``zsrl.envs`` or the
  application;
* ``zsrl.agents`` and ``zsrl.envs`` import only the core (and themselves), never each other;
* the **application** (commands, training loop, evaluation, reports) sits on top.

Every import statement counts, those inside functions and ``if TYPE_CHECKING:`` blocks too,
and no module imports itself back through others (no import circles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: where each subpackage's files live (pyproject.toml maps agents/ and envs/ into zsrl)
SOURCES = {"zsrl": ROOT / "zsrl", "zsrl.agents": ROOT / "agents", "zsrl.envs": ROOT / "envs"}
CORE = {"errors", "utils", "nn", "config", "data", "storage", "engine", "registry", "stats", "interrupt",
        "distributed"}
#: the package itself (zsrl/__init__.py) is the face of the application: it lends the API lazily
APPLICATION = {"zsrl", "__main__", "api", "cli", "pipeline", "collection", "explore", "training", "checkpoint", "evaluation",
               "importers", "callbacks", "trackers", "report", "plots"}
#: what each layer may import
ALLOWED = {"core": {"core"}, "agents": {"core", "agents"}, "envs": {"core", "envs"},
           "application": {"core", "agents", "envs", "application"}}


def modules(sources: dict[str, Path] = SOURCES) -> dict[str, Path]:
    """Module name → file, for every module of the package."""
    out = {}
    for package, folder in sources.items():
        for file in sorted(folder.rglob("*.py")):
            parts = file.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            out[name] = file
    return out


def layer(module: str) -> str:
    """The layer of a module of the package (a KeyError names an unclassified one)."""
    for package in ("zsrl.agents", "zsrl.envs"):
        if module == package or module.startswith(package + "."):
            return package.split(".")[1]
    top = module.split(".")[1] if "." in module else "zsrl"
    if top in CORE:
        return "core"
    if top in APPLICATION:
        return "application"
    raise KeyError(f"{module} is in no layer: add it to CORE or APPLICATION in tests/test_layers.py")


def imports(module: str, file: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports (absolute and relative imports)."""
    is_package = file.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            subs = [f"{base}.{alias.name}" for alias in node.names]
            # `from package import module` imports the module (the package's own code runs first
            # for every import of its modules alike, so it is not an edge of the graph)
            names = subs if all(sub in known for sub in subs) else [base, *subs]
        else:
            continue
        for name in names:
            while name and name not in known:  # a name inside a module → that module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def violations(sources: dict[str, Path] = SOURCES) -> list[str]:
    files = modules(sources)
    graph = {m: imports(m, f, set(files)) for m, f in files.items()}
    bad = [f"{m} ({layer(m)}) imports {other} ({layer(other)})"
           for m, targets in graph.items() for other in sorted(targets)
           if layer(other) not in ALLOWED[layer(m)]]
    return bad + [f"import circle: {' -> '.join(c)}" for c in circles(graph)]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each module that reaches itself again (depth-first search)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for other in sorted(graph[m]):
            if state[other] == 1:
                found.append([*path[path.index(other):], other])
            elif state[other] == 0:
                visit(other, [*path, other])
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m, [m])
    return found


def test_every_module_is_in_a_layer():
    for module in modules():
        layer(module)


def test_layers_import_one_way_and_modules_form_no_circle():
    assert violations() == []


@pytest.mark.parametrize("planted, expected", [
    ("from zsrl.agents.base import Model", "zsrl.nn (core) imports zsrl.agents.base (agents)"),
    ("from zsrl.training import start_run", "zsrl.nn (core) imports zsrl.training (application)"),
])
def test_the_check_fails_on_a_planted_upward_import(tmp_path, planted, expected):
    """The checker itself: a copy of the sources with one upward import planted fails."""
    copies = {}
    for package, folder in SOURCES.items():
        copies[package] = tmp_path / folder.name
        for file in folder.rglob("*.py"):
            target = copies[package] / file.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(file.read_text())
    nn = copies["zsrl"] / "nn.py"
    nn.write_text(f"{planted}\n{nn.read_text()}")
    assert expected in violations(copies)
    (copies["zsrl"] / "utils.py").write_text("import zsrl.storage\n" + (copies["zsrl"] / "utils.py").read_text())
    circle = [v for v in violations(copies) if v.startswith("import circle:") and "zsrl.storage -> zsrl.utils" in v]
    assert circle, violations(copies)
