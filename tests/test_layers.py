"""The package's layers: every import (at the top of a module or inside a function) goes to the same layer or
a lower one, and no modules import each other in a circle. Read statically from the source tree; imports
under ``if TYPE_CHECKING:`` are annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module name ending in ".*" covers a package and everything in it
LAYERS: list[tuple[str, set[str]]] = [
    ("vocabulary and small helpers", {"rightsizer", "rightsizer.errors", "rightsizer.records", "rightsizer.plan",
                                      "rightsizer.stats", "rightsizer.timing", "rightsizer.builtin_data",
                                      "rightsizer.adapters_registry", "rightsizer.quantize", "rightsizer.slicing",
                                      "rightsizer.inference", "rightsizer.outputs", "rightsizer.deepspeed",
                                      "rightsizer.manifests", "rightsizer.progress", "rightsizer.rundir"}),
    ("models, storage, candidates", {"rightsizer.models", "rightsizer.storage", "rightsizer.candidates"}),
    ("the config", {"rightsizer.config"}),
    ("data and pods", {"rightsizer.data", "rightsizer.pods", "rightsizer.tensorboard", "rightsizer.component_runtime",
                       "rightsizer.predict"}),
    ("training machinery", {"rightsizer.train", "rightsizer.train.*"}),
    ("launching", {"rightsizer.launch", "rightsizer.launch.*"}),
    ("stages", {"rightsizer.stages", "rightsizer.stages.*"}),
    ("the pipeline and the up-front checks", {"rightsizer.pipeline", "rightsizer.kfp_client", "rightsizer.validate"}),
    ("the command line", {"rightsizer.cli"}),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in (SRC / "rightsizer").rglob("*.py")}


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py; add it to the one it belongs to")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def _target(name: str) -> str | None:
    """The package module ``name`` refers to (``from rightsizer.x import y`` may name module x.y or a name in x)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> dict[str, int]:
    """{imported package module: line} for every import in ``module``'s source."""
    tree = ast.parse(MODULES[module].read_text())
    skipped = _type_checking_nodes(tree)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "rightsizer" or name.startswith("rightsizer."):
                target = _target(name)
                if target and target != module:
                    found.setdefault(target, node.lineno)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_goes_up_a_layer():
    upward = [f"{module}:{line} imports {target} ({LAYERS[layer_of(target)][0]} is above "
              f"{LAYERS[layer_of(module)][0]})"
              for module, targets in GRAPH.items() for target, line in targets.items()
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, circles


def test_the_check_sees_imports_inside_functions():
    assert "rightsizer.pods" in GRAPH["rightsizer.launch.trainjob"]  # imported inside build_request
    assert "rightsizer.config" not in GRAPH["rightsizer.candidates"]  # only under TYPE_CHECKING


# facts about the machine, each read in one function (a second reader drifts: one path checked the GPU count,
# another only availability); the key is the call, the value the one module allowed to make it
READ_ONCE = {"is_bf16_supported(": "rightsizer.inference",  # gpu_bf16()
             'environ.get("RANK"': "rightsizer.outputs",  # process_rank()
             'environ.get("WORLD_SIZE"': "rightsizer.outputs"}  # world_size()


def test_machine_facts_are_read_in_one_place():
    readers = {call: sorted(module for module, path in MODULES.items() if call in path.read_text())
               for call in READ_ONCE}
    assert readers == {call: [module] for call, module in READ_ONCE.items()}
