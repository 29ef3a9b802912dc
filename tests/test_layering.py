"""The import layering README's "How the code is laid out" describes: a module imports only modules of
its own layer or a lower one, and no name with a leading underscore of another module. Read from the
source with ast (every import, also those inside functions), so nothing is imported or run."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# README's table, lowest first: a module may import its own layer and those before it. The measurements
# (eval/ below train.py) are what train.py's eval hooks use too; the experiment's evaluation reads runs.
LAYERS = [
    ("errors", ["errors"]),
    ("helpers, data", ["files", "system", "configurator", "data", "data.*"]),
    ("model", ["model"]),
    ("weights in and out", ["checkpoint", "hf", "load"]),
    ("training parts", ["disperse", "disperse_torch", "disperse_triton", "controls", "fsdp"]),
    ("measurements", ["eval", "eval.tasks", "eval.scoring", "eval.benchmarks", "eval.condensation", "eval.stats",
                      "eval.plots", "eval.hooks"]),
    ("training", ["train", "sample"]),
    ("experiment's evaluation", ["eval.evaluate", "eval.runs", "eval.compare", "eval.report"]),
    ("experiment", ["grid", "experiment"]),
]


def layer_of(module):
    for i, (_, names) in enumerate(LAYERS):
        if module in names or any(n.endswith(".*") and module.startswith(n[:-1]) for n in names):
            return i
    return None


def modules():
    """{module name: path} of the code the layering covers: top-level files, eval/ and data/ (not
    tests/, bench/ or config/, which may import anything)."""
    paths = list(REPO.glob("*.py")) + list(REPO.glob("eval/*.py")) + list(REPO.glob("data/**/*.py"))
    found = {}
    for path in paths:
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)] = path
    return found


def imports(path, local):
    """(line, imported module, name or None) for every import of a local module in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name in local]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"  # `from eval import tasks` imports the module eval.tasks
                if sub in local:
                    out.append((node.lineno, sub, None))
                elif node.module in local:
                    out.append((node.lineno, node.module, a.name))
    return out


MODULES = modules()


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == [], "add the new module to LAYERS (and README's table)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    upward = [f"line {line}: imports {target} ({LAYERS[layer_of(target)][0]})"
              for line, target, _ in imports(MODULES[module], MODULES) if layer_of(target) > layer_of(module)]
    assert upward == [], f"{module} ({LAYERS[layer_of(module)][0]}) imports upward: {upward}"


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in list(MODULES.values())
                                        + list(REPO.glob("bench/*.py"))))
def test_no_private_name_of_another_module(path):
    """`from x import _y` and `x._y` (x a module of this repository) outside x itself."""
    tree = ast.parse((REPO / path).read_text(), path)
    aliases, found = {}, []
    for line, target, name in imports(REPO / path, set(MODULES) | {f"bench.{p.stem}" for p in REPO.glob("bench/*.py")}):
        if name is not None and name.startswith("_") and not name.startswith("__"):
            found.append(f"line {line}: from {target} import {name}")
    for node in ast.walk(tree):  # the names modules are bound to: import x, import x as y, from p import x as y
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                full = a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}"
                if full in MODULES:
                    aliases[a.asname or a.name] = full
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert found == [], f"{path} uses private names of other modules; make them public or move the code: {found}"
