"""The package's shape: a small top level, a light import, imports that flow one way, files under 500 lines."""

import ast
import os
import subprocess
import sys

import pytest

import gradiend_peft

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "gradiend_peft")

# Which of the package's parts each part may import (a part is a top-level module or subpackage). The layers:
# tuner (weight-space maths) <- objective (gradients from rows) <- training / evaluation / pruning <- cli.
ALLOWED = {
    "__init__": {"registration", "tuner", "atomic", "saving", "loading", "pruning", "training", "evaluation"},
    "registration": {"tuner"},
    "tuner": {"atomic"},
    "editing": {"tuner"},
    "atomic": set(),
    "data": {"atomic"},
    "objective": {"tuner"},
    "saving": {"atomic", "tuner"},
    "loading": {"atomic", "registration", "tuner"},
    "pruning": {"objective", "tuner"},
    "training": {"atomic", "data", "saving", "loading", "objective", "tuner"},
    "evaluation": {"atomic", "data", "objective", "tuner"},
    "plotting": {"atomic"},
    "pretrained": {"atomic"},
    "planning": {"objective", "pretrained", "tuner"},
    "cli": {"atomic", "data", "evaluation", "saving", "loading", "planning", "plotting", "pretrained", "training", "tuner"},
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _import_graph() -> dict[str, set[str]]:
    """Part -> the other parts it imports anywhere (module level or inside functions), from the source's AST."""
    graph: dict[str, set[str]] = {}
    for folder, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = ("gradiend_peft." + os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")).removesuffix(".__init__")
            package = module if name == "__init__.py" else module.rsplit(".", 1)[0]
            own = _part(module)
            graph.setdefault(own, set())
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                targets = []
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    targets = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                for target in targets:
                    if target.startswith("gradiend_peft.") and _part(target) != own:
                        graph[own].add(_part(target))
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
