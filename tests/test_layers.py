"""Imports go one way, down LAYERS: cli -> study, cli_flags -> app, export, bench -> commands -> train (and its
log, data, range test) -> report -> inference -> checkpoint, device, distributed -> data, models, run, config ->
errors, console, atomic, cpuinfo, net; read from the source with `ast` (imports inside functions included), so a
circle cannot hide behind a lazy import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifarkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported cifarkit module: line}. `from pkg import name` points at pkg.name when that is a module.
    Importing a.b.c also runs the packages a.b and a, unless the importer lives inside them already."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            for target in targets:
                if not target.startswith("cifarkit"):
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:i])
                    inside = name == ancestor or name.startswith(ancestor + ".")
                    if ancestor in modules and ancestor != name and (i == len(parts) or not inside):
                        edges.setdefault(ancestor, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


# Top to bottom: a module may import from its own layer's neighbours and from any layer below, never from one above.
# Every package and every top-level module has its place (test_the_layers_are_every_module).
LAYERS = (
    ("cifarkit.cli", "cifarkit.__main__"),  # parses, dispatches, prints
    ("cifarkit.study", "cifarkit.cli_flags"),  # the flags and their checks; sweep and compare build their own parsers
    ("cifarkit.app", "cifarkit.export", "cifarkit.bench"),  # commands with extras of their own, below argparse
    ("cifarkit.commands",),  # the bodies of train, lr-find, evaluate, predict, report, summary, cache
    ("cifarkit.train", "cifarkit.runlog", "cifarkit.training_data", "cifarkit.lr_finder", "cifarkit.interruptions",
     "cifarkit.schedule"),  # fit: the loop, its log, its data, the range test, stopping, the one-cycle schedule
    ("cifarkit.report",),  # a run's figures and report
    ("cifarkit.inference",),  # a trained model at work: model file, preprocessing, open_run, evaluate
    ("cifarkit.checkpoint", "cifarkit.device", "cifarkit.distributed", "cifarkit.flops"),  # torch's safe loads and
    # saves, the device and precision policy, the ranks' collectives, multiply-adds
    ("cifarkit.data", "cifarkit.models", "cifarkit.run", "cifarkit.config"),  # the data, the network, the run folder,
    # TrainConfig (which checks its values with data.stats; data never imports it)
    ("cifarkit.errors", "cifarkit.console", "cifarkit.atomic", "cifarkit.cpuinfo", "cifarkit.net"),  # torch-free
    # pieces every layer may use: the error, the console, whole-file writes, the CPUs, a server's address
)


GRAPH = import_graph()


def test_the_graph_sees_the_package() -> None:
    """The reader finds every layer and the edges between them (so the rules below are not vacuous)."""
    for layer in ("cifarkit.cli", "cifarkit.commands", "cifarkit.train", "cifarkit.data", "cifarkit.models",
                  "cifarkit.report"):
        assert any(in_layer(m, layer) for m in GRAPH), layer
    for layer in (name for names in LAYERS for name in names):
        assert any(in_layer(m, layer) for m in GRAPH), layer
    assert "cifarkit.inference" in GRAPH["cifarkit.report.figures"]  # report draws with inference's predict_proba
    assert "cifarkit.train" in GRAPH["cifarkit.commands"]
    assert "cifarkit.data.loaders" in GRAPH["cifarkit.train"]


def test_no_import_cycle() -> None:
    """No module reaches itself through imports, at module level or inside functions."""
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


@pytest.mark.parametrize("lower", [layer for level in LAYERS[1:] for layer in level])
def test_lower_layers_never_import_upper_ones(lower: str) -> None:
    """No layer imports one above it (LAYERS): models, data and report never import train, commands or cli; inference
    never imports report or train; nothing below cli imports the app, the study or export; the app never imports the
    command line's flags; a top-level module (checkpoint, device, runlog, ...) is held to its layer like a package."""
    level = next(i for i, names in enumerate(LAYERS) if lower in names)
    upper = [name for names in LAYERS[:level] for name in names]
    bad = [f"{m} imports {t} (line {line})" for m, edges in GRAPH.items() if in_layer(m, lower)
           for t, line in edges.items() if any(in_layer(t, up) for up in upper)]
    assert not bad, bad


def test_the_layers_are_every_module() -> None:
    """Every package of cifarkit and every top-level module has its place in LAYERS, once (a new one cannot slip
    past the rule above); the package itself (cifarkit/__init__.py) is the only module outside them."""
    top = {module_name(p) for p in PACKAGE.glob("*.py")} | {module_name(p) for p in PACKAGE.glob("*/__init__.py")}
    placed = [name for names in LAYERS for name in names]
    assert len(placed) == len(set(placed)), placed
    assert {"cifarkit.cli_flags", "cifarkit.lr_finder", "cifarkit.checkpoint", "cifarkit.device"} <= top
    assert top - {"cifarkit"} == set(placed), (top - {"cifarkit"}) ^ set(placed)


def test_only_the_entry_points_import_cli() -> None:
    """Nothing below cli imports cli; train never imports commands."""
    bad = [f"{m} imports cifarkit.cli (line {line})" for m, edges in GRAPH.items()
           if m not in ("cifarkit.cli", "cifarkit.__main__") for t, line in edges.items() if t == "cifarkit.cli"]
    bad += [f"cifarkit.train imports {t}" for t in GRAPH["cifarkit.train"] if t == "cifarkit.commands"]
    assert not bad, bad


def test_a_planted_cycle_is_named() -> None:
    """The cycle finder reports the modules of a circle in order (the check above can fail)."""
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def package_of(module: str) -> str:
    """cifarkit.data.loaders -> cifarkit.data; a top-level module (cifarkit.config) is a node of its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The import graph between packages and top-level modules: an edge a -> b when some module of a imports one
    of b (imports inside a package are left out)."""
    packages: dict[str, dict[str, int]] = {}
    for module, edges in graph.items():
        here = packages.setdefault(package_of(module), {})
        for target, line in edges.items():
            if package_of(target) != package_of(module):
                here.setdefault(package_of(target), line)
    return packages


def test_no_import_cycle_between_packages() -> None:
    """No package reaches itself through another: data never imports config while config imports data.stats
    (data takes an AugmentSpec instead), and so on for every pair."""
    packages = package_graph(GRAPH)
    assert "cifarkit.data" in packages["cifarkit.config"]  # the reader sees the edge the rule is about
    cycle = find_cycle(packages)
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


def test_a_planted_package_cycle_is_named() -> None:
    """Two packages that import each other through different modules form a cycle at the package level, though
    the module graph has none (the check above can fail)."""
    graph = {"cifarkit.data.loaders": {"cifarkit.config": 1}, "cifarkit.config": {"cifarkit.data.stats": 2},
             "cifarkit.data.stats": {}}
    assert find_cycle(graph) is None
    assert find_cycle(package_graph(graph)) in (["cifarkit.data", "cifarkit.config", "cifarkit.data"],
                                                ["cifarkit.config", "cifarkit.data", "cifarkit.config"])


def spelled_names(path: Path, names: tuple[str, ...]) -> list[str]:
    """Where a module's string literals (f-string parts included, docstrings left out) spell one of `names`."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{path.name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and any(name in node.value for name in names)]


def test_only_the_run_module_spells_run_folder_file_names() -> None:
    """Every file name of a run folder that cifarkit.run owns (config.json, metrics.json, model.pt, last.pt, ...) is
    spelled in run/files.py alone; every other module uses its constants."""
    from cifarkit import run

    names = run.FILE_NAMES
    assert {"config.json", "metrics.json", "model.pt", "last.pt", "lr_finder.json", "history.csv"} <= set(names)
    owner = PACKAGE / "run" / "files.py"
    bad = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != owner for hit in spelled_names(path, names)]
    assert not bad, bad


def test_the_name_guard_sees_a_literal(tmp_path: Path) -> None:
    """A module that writes "metrics.json" in code is caught; the same words in its docstring are not."""
    module = tmp_path / "m.py"
    module.write_text('"""Reads metrics.json."""\nPATH = "runs/a/metrics.json"\n')
    assert spelled_names(module, ("metrics.json",)) == ["m.py:2 'runs/a/metrics.json'"]


def printing_modules() -> dict[str, int]:
    """module -> line of its first print() call (results go to stdout through whoever prints them)."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.setdefault(module_name(path), node.lineno)
    return found


def test_cli_parses_dispatches_and_prints() -> None:
    """cli imports the command bodies and the torch-free pieces it parses with, never the data, the model, training,
    inference or the report itself; command bodies return their results, and only cli prints them (app.server prints
    the address it serves; the study's commands print their own tables)."""
    allowed = {"cifarkit", "cifarkit.cli_flags", "cifarkit.commands", "cifarkit.config", "cifarkit.console",
               "cifarkit.errors", "cifarkit.run", "cifarkit.app", "cifarkit.app.server", "cifarkit.export",
               "cifarkit.bench", "cifarkit.study", "cifarkit.study.commands"}
    assert "cifarkit.commands" in GRAPH["cifarkit.cli"]  # the reader sees the dispatch
    assert set(GRAPH["cifarkit.cli"]) <= allowed, set(GRAPH["cifarkit.cli"]) - allowed
    printing = printing_modules()
    assert "cifarkit.cli" in printing  # the reader sees a print
    bad = {m: line for m, line in printing.items() if m not in ("cifarkit.cli", "cifarkit.app.server")
           and not in_layer(m, "cifarkit.study")}
    assert not bad, bad
