"""The package's shape: a small top level, a light import, imports that flow one way, files under 500 lines."""

import ast
import os
import subprocess
import sys

import pytest

import gradiend_peft

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "gradiend_peft")

# Which of the package's parts each part may import (a part is a top-level module or subpackage). The layers:
# tuner (weight-space maths) <- objective (gradients from rows) <- training / evaluation / pruning <- cli. The tuner
# also holds the package's constants and the masked/causal rule (tuner.constants), which data and pretrained read.
ALLOWED = {
    "__init__": {"registration", "tuner", "atomic", "saving", "loading", "pruning", "training", "evaluation"},
    "registration": {"tuner"},
    "tuner": {"atomic"},
    "editing": {"tuner"},
    "atomic": set(),
    "data": {"atomic", "tuner"},
    "objective": {"tuner"},
    "saving": {"atomic", "tuner"},
    "loading": {"atomic", "registration", "tuner"},
    "pair_adapters": {"atomic", "data", "saving", "loading", "tuner"},
    "pruning": {"objective", "tuner"},
    "training": {"atomic", "data", "saving", "loading", "objective", "tuner"},
    "evaluation": {"atomic", "data", "editing", "objective", "tuner"},
    "bias": {"atomic", "data", "evaluation", "tuner"},  # the studies (race, religion, gender): data and benchmarks
    "plotting": {"atomic"},
    "pretrained": {"atomic", "tuner"},
    "planning": {"objective", "pretrained", "tuner"},
    "cli": {"atomic", "bias", "data", "evaluation", "saving", "loading", "pair_adapters", "planning", "plotting",
            "pretrained", "training", "tuner"},
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_imports() -> dict[str, set[str]]:
    """Module -> the package's modules and packages it imports anywhere (module level or inside functions), from the
    source's AST; ``from x import y`` counts as importing ``x`` and, where ``x.y`` is a module, ``x.y``."""
    sources = {}
    for folder, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = "gradiend_peft." + os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                sources[module.removesuffix(".__init__")] = (path, name == "__init__.py")
    imports: dict[str, set[str]] = {}
    for module, (path, is_package) in sources.items():
        package = module if is_package else module.rsplit(".", 1)[0]
        found = imports.setdefault(module, set())
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            found.update(t for t in targets if t in sources and t != module)
    return imports


def _import_graph() -> dict[str, set[str]]:
    """Part -> the other parts it imports anywhere (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for module, targets in _module_imports().items():
        own = _part(module)
        graph.setdefault(own, set()).update(_part(t) for t in targets if _part(t) != own)
    return graph


def test_imports_flow_one_way():
    graph = _import_graph()
    assert set(graph) <= set(ALLOWED), f"new parts need a place in the layering: {set(graph) - set(ALLOWED)}"
    for part, imported in graph.items():
        assert imported <= ALLOWED[part], f"{part} imports {sorted(imported - ALLOWED[part])}"
    # and the allowed table itself has no cycle (a topological order exists)
    remaining = {part: set(deps) for part, deps in ALLOWED.items()}
    while remaining:
        ready = [part for part, deps in remaining.items() if not deps & set(remaining) - {part}]
        assert ready, f"import cycle among {sorted(remaining)}"
        for part in ready:
            del remaining[part]


def test_no_two_modules_import_each_other_even_through_others():
    """No cycle among the package's modules (a lazy import inside a function counts: it hides a two-way dependency).
    A package's ``__init__`` re-exporting its own modules is not a cycle with them."""
    imports = {module: {t for t in targets if not module.startswith(t + ".")}  # a module's own package
               for module, targets in _module_imports().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(imports.get(module, ())):
            assert state.get(target) != 1, f"import cycle: {' -> '.join(path[path.index(target):] + [target])}"
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            visit(module, [module])


def test_import_loads_no_training_evaluation_or_cli_code():
    code = ("import sys, gradiend_peft; "
            "print(sorted(m for m in sys.modules if m.startswith('gradiend_peft') or m == 'transformers.trainer'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = eval(result.stdout.strip())  # a printed list of module names
    assert "gradiend_peft.tuner.model" in loaded  # the adapter is there
    others = [m for m in loaded if m not in ("gradiend_peft", "gradiend_peft.registration")
              and not m.startswith("gradiend_peft.tuner")]
    assert others == [], others


def test_the_top_level_is_small_and_every_name_resolves():
    assert len(gradiend_peft.__all__) <= 15
    for name in gradiend_peft.__all__:
        assert getattr(gradiend_peft, name) is not None, name
    for gone in ("batch_gradients", "per_example_dots", "Feature", "mine_pairs", "Balance", "write_model_card"):
        with pytest.raises(AttributeError):
            getattr(gradiend_peft, gone)  # moved to a submodule (docs/migration.md)


def test_no_source_file_is_over_500_lines():
    long = []
    for folder, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as handle:
                    lines = sum(1 for _ in handle)
                if lines > 500:
                    long.append((os.path.relpath(path, SRC), lines))
    assert not long, long
