"""The package's import graph, read from the source (AST; nothing is imported or executed).

Rules (mot_parallel/DESIGN.md, "Where a module goes"):
  * the runtime (what a training or sampling job runs) imports nothing from the tooling packages
    (corpus_building/, studies/, testing/);
  * every runtime module is reached from a runtime entry point (a module only tools or tests import serves
    tools: it belongs in corpus_building/ or studies/);
  * packages form layers and every import points down or sideways inside a layer: no upward arrow, so no
    circle between packages;
  * no import inside a function whose reason is to dodge a circle (the imported module, at import time,
    already reaches the importer); lazy imports of heavy or optional modules stay allowed.
`if TYPE_CHECKING:` imports never run and are not edges.
"""
import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "mot_parallel"

# Bottom to top; a package may import its own layer's packages and those below. Top-level modules
# (flops.py, cli.py, ...) are packages of their own here.
LAYERS = [
    ("config", "lazy_exports", "outputs", "sampling_checks"),  # the last three import nothing of ours
    ("distributed",),
    ("tensor_parallel",),
    ("model",),
    ("flops", "generation"),
    ("planner", "data", "convert"),
    ("training", "inference", "megatron"),
    ("preflight", "cli"),
    # tooling: never imported by the layers above
    ("corpus_building",),
    ("studies", "testing"),
]
TOOLING = {"corpus_building", "studies", "testing"}

# Where a training or sampling job enters the runtime; every other runtime module must be reached from one.
ENTRY_POINTS = {
    "mot_parallel.training": "launch/pretrain.py trains with the Trainer",
    "mot_parallel.megatron": "Megatron-Core users import the layers",
    "mot_parallel.inference": "mot_parallel.load_pretrained",
    "mot_parallel.generation": "tools/sample.py generates",
    "mot_parallel.data.text_tokenizer": "sampling decodes text with the corpus's tokenizer",
    "mot_parallel.data.images": "sampling decodes pictures (decode_patches)",
    "mot_parallel.preflight": "launch/pretrain.py checks files before process groups",
    "mot_parallel.training.dry_run": "launch/pretrain.py --dry-run builds a rank on the meta device",
    "mot_parallel.cli": "launch/ and tools/ parse arguments with it",
    "mot_parallel.config.__main__": "python -m mot_parallel.config",
    "mot_parallel.distributed.placement": "launch/pretrain.py logs which node runs which ranks",
    "mot_parallel.planner.reshard": "the planner's cost of resuming onto another layout, beside the memory model "
                                    "it extends (tools/plan.py prints it; the planner is the dry run's)",
}


# Dodged circles waiting for their fix, each with the fix; the list only shrinks.
KNOWN_DODGES = {}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_type_checking(node) -> bool:
    test = node.test
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree, in_function=False):
    """(node, inside a function) of every import that can run."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:  # the body only serves annotations
                yield from _imports(ast.Module(body=[child], type_ignores=[]), in_function)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        else:
            yield from _imports(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _targets(module: str, node) -> list:
    """The mot_parallel modules an import statement loads, parent packages included."""
    if isinstance(node, ast.Import):
        named = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        named = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
    out = set()
    for name in named:
        if not name.startswith("mot_parallel."):
            continue
        parts = name.split(".")
        out.update(".".join(parts[:k]) for k in range(2, len(parts) + 1) if ".".join(parts[:k]) in MODULES)
    own_packages = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
    return sorted(out - own_packages)  # the importer's own packages are loaded before it


def _lazy_exports(module: str, tree) -> list:
    """A package's `_EXPORTS = {name: submodule}` (mot_parallel/lazy_exports.py) loads those submodules on
    first use: edges like imports, at module level (importing the name from the package loads them)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            out += [(module, f"{module}.{v.value}", node.lineno, False) for v in node.value.values
                    if isinstance(v, ast.Constant) and f"{module}.{v.value}" in MODULES]
    return out


def _edges():
    """[(importer, imported, line, inside a function)] over the package."""
    edges = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node, lazy in _imports(tree):
            edges += [(module, t, node.lineno, lazy) for t in _targets(module, node) if t != module]
        edges += _lazy_exports(module, tree)
    return edges


EDGES = _edges()
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_graph():
    """{package: sorted packages it imports} (the root package mot_parallel/__init__.py, a facade, aside)."""
    graph = defaultdict(set)
    for a, b, _, _ in EDGES:
        if _package(a) and _package(b) and _package(a) != _package(b):
            graph[_package(a)].add(_package(b))
    return {k: sorted(v) for k, v in sorted(graph.items())}


def test_every_package_has_a_layer():
    """A new package (or top-level module) is placed in LAYERS, runtime or tooling, before it lands."""
    unplaced = sorted({_package(m) for m in MODULES if _package(m) and _package(m) not in LAYER_OF})
    assert not unplaced, (f"place {unplaced} in tests/test_import_graph.py LAYERS (runtime below "
                          "corpus_building, or tooling) and in docs/code_map.md")


def test_runtime_imports_no_tooling():
    """A training or sampling job never loads corpus building, studies or the test harness."""
    bad = [f"{a}:{line} imports {b}" for a, b, line, _ in EDGES
           if _package(a) not in TOOLING and _package(a) and _package(b) in TOOLING]
    assert not bad, ("runtime modules import tooling (move what they need into the runtime, or the module "
                     "into corpus_building/ or studies/):\n  " + "\n  ".join(bad))


def test_no_upward_imports_so_no_circles():
    """Imports point down the layers (or sideways in one); the package graph has no circle."""
    up = [f"{a}:{line} -> {b} ({_package(a)} is layer {LAYER_OF[_package(a)]}, {_package(b)} layer "
          f"{LAYER_OF[_package(b)]})" for a, b, line, _ in EDGES
          if _package(a) in LAYER_OF and _package(b) in LAYER_OF and LAYER_OF[_package(b)] > LAYER_OF[_package(a)]]
    assert not up, "upward imports:\n  " + "\n  ".join(up)
    graph, state, cycle = package_graph(), {}, []

    def visit(p, path):
        state[p] = "open"
        for q in graph.get(p, ()):
            if state.get(q) == "open":
                cycle.append(" -> ".join(path + [q]))
            elif q not in state:
                visit(q, path + [q])
        state[p] = "done"
    for p in graph:
        if p not in state:
            visit(p, [p])
    assert not cycle, "package circles:\n  " + "\n  ".join(cycle)


def _reach(start, edges):
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += edges.get(m, ())
    return seen


def test_no_import_inside_a_function_to_dodge_a_circle():
    """A function-level import of a module that, at import time, already reaches the importer is a circle
    in disguise: restructure (move the shared piece down) instead."""
    eager = defaultdict(set)
    for a, b, _, lazy in EDGES:
        if not lazy:
            eager[a].add(b)
    dodges = [f"{a}:{line} imports {b} inside a function, and {b} imports {a} (through its own imports)"
              for a, b, line, lazy in EDGES if lazy and _package(a) and a in _reach(b, eager)
              and (a, b) not in KNOWN_DODGES]
    fixed = [pair for pair in KNOWN_DODGES if not any(lazy and (a, b) == pair for a, b, _, lazy in EDGES)]
    assert not fixed, f"fixed, so remove from KNOWN_DODGES: {fixed}"
    assert not dodges, "\n  ".join(["circles dodged by a lazy import:"] + dodges)


def test_every_runtime_module_serves_a_job():
    """A runtime module no entry point reaches is used only by tools or tests: it is tooling in the wrong
    package (move it to corpus_building/ or studies/, or name its job in ENTRY_POINTS)."""
    runtime = {m for m in MODULES if _package(m) and _package(m) not in TOOLING}
    edges = defaultdict(set)
    for a, b, _, _ in EDGES:
        if a in runtime and b in runtime:
            edges[a].add(b)
    reached = set()
    for entry in ENTRY_POINTS:
        assert entry in MODULES, f"ENTRY_POINTS names {entry}, which no longer exists"
        reached |= _reach(entry, edges)
    stray = sorted(runtime - reached)
    assert not stray, ("runtime modules that no training or sampling job imports (tools or tests only?):\n  " +
                       "\n  ".join(f"{m} ({MODULES[m].relative_to(ROOT.parent)})" for m in stray))


@pytest.mark.parametrize("module", ["mot_parallel.data.picture_score", "mot_parallel.benchmarks.loader_gil"])
def test_the_rules_name_a_misplaced_module(module, monkeypatch):
    """A tooling module dropped into the runtime later is named: unreached by any job, or an unplaced package."""
    fake = ROOT / (module.split(".", 1)[1].replace(".", "/") + ".py")
    monkeypatch.setitem(MODULES, module, fake)
    if _package(module) in LAYER_OF:
        with pytest.raises(AssertionError, match=module.replace(".", r"\.")):
            test_every_runtime_module_serves_a_job()
    else:
        with pytest.raises(AssertionError, match=_package(module)):
            test_every_package_has_a_layer()


def test_every_import_of_ours_resolves():
    """An import of a mot_parallel module that does not exist (a relative import left behind by a move) fails
    here, by file and line, not at run time in the one tool that reaches it."""
    missing = []
    for module, path in MODULES.items():
        for node, _ in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
                if source not in MODULES:
                    missing.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {source}")
    assert not missing, "imports of modules that do not exist:\n  " + "\n  ".join(missing)

