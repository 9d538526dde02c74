"""The module layout the README's code map describes: who may import whom.

Read from the source with ast (every import, at module level or inside a function),
so a lazy import that closes a cycle is caught as well.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in ROOT.glob("*.py"))
LEAVES = ("errors", "kernels")  # import nothing of the project


def project_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: project_imports(module) for module in MODULES}


def test_leaves_import_nothing_of_the_project():
    for leaf in LEAVES:
        assert GRAPH[leaf] == set(), (leaf, GRAPH[leaf])


def test_configuration_imports_only_errors():
    assert GRAPH["configuration"] == {"errors"}, GRAPH["configuration"]


def test_modeling_imports_only_the_leaves_and_the_configuration():
    assert GRAPH["modeling"] <= {*LEAVES, "configuration"}, GRAPH["modeling"]
    assert {"kernels", "configuration"} <= GRAPH["modeling"]


def test_modeling_opens_with_a_layer():
    """The configuration lives in configuration.py: modeling.py's first class is a module."""
    tree = ast.parse((ROOT / "modeling.py").read_text(encoding="utf-8"))
    first = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    assert [ast.unparse(base) for base in first.bases] == ["nn.Module"], first.name


def test_no_import_cycle():
    def visit(module, path):
        for imported in GRAPH[module]:
            assert imported not in path, f"import cycle: {' -> '.join([*path, imported])}"
            visit(imported, [*path, imported])

    for module in MODULES:
        visit(module, [module])


def test_library_modules_never_import_a_script():
    scripts = {"run_multi_task", "extract_features", "convert_tf_checkpoint_to_pytorch", "demo", "predict"}
    for module in set(MODULES) - scripts:
        assert not GRAPH[module] & scripts, (module, GRAPH[module] & scripts)


def test_one_error_base():
    """Every exception class the project defines derives from errors.Error, except the
    stop signal (a BaseException, like KeyboardInterrupt) and tokenization's KeyError
    for an unknown token (the original's dictionary lookup error)."""
    allowed_outside = {("errors", "StopRequested"), ("tokenization", "UnknownTokenError")}
    for module in MODULES:
        tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {ast.unparse(base) for base in node.bases}
            if any(b.endswith(("Error", "Exception")) for b in bases) or node.name.endswith("Error"):
                if (module, node.name) in allowed_outside or node.name == "Error":
                    continue
                assert module == "errors", f"{module}.{node.name}: exception classes live in errors.py"
