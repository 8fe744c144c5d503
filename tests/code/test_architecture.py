"""The package's shape: the layer contracts in pyproject.toml hold, and no module import cycle exists.

The cycle check reads the source itself (every `import`, at module level or inside a function),
so a cycle cannot hide behind a function-level import.
"""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "src" / "agerange"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    """`src/agerange/training/data.py` -> `agerange.training.data` (a package is its __init__)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], root: Path = PACKAGE.parent) -> set[str]:
    """The package's modules that a file imports anywhere in it (relative imports resolved)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from agerange import tracking` imports a module; `from agerange.x import f` imports x
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import agerange.x.y` where y is a name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    (tmp_path / "agerange").mkdir()
    source = tmp_path / "agerange" / "predict.py"
    source.write_text(
        "import numpy\nfrom . import files\n\n\ndef f():\n    from agerange import tracking\n"
        "    import agerange.registry.download_model\n"
    )
    modules = {"agerange.tracking", "agerange.files", "agerange.registry", "agerange.predict"}
    found = imported_modules(source, modules, root=tmp_path)
    assert found == {"agerange.tracking", "agerange.files", "agerange.registry"}


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "agerange.tracking" in graph and graph["agerange.predict"], "the package was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_package_imports_no_stage_script_or_test():
    """Stage scripts (pipelines/) and tests sit above the package: it never imports them."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{module_name(path)} -> {n}" for n in names if n.split(".")[0] in ("pipelines", "tests")
            ]
    assert not offenders


def test_the_layer_contracts_in_pyproject_hold():
    """`lint-imports` with the contracts in pyproject.toml (layers, and no MLflow in training)."""
    linter = Path(sys.executable).parent / "lint-imports"
    assert linter.is_file(), f"{linter}: import-linter is missing (pip install -e '.[dev]')"
    result = subprocess.run(
        [str(linter), "--no-cache", "--no-logo"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
