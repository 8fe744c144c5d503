"""DVC knows what each stage reads: its code (the import closure) in `deps`, its settings in `params`.

A stage whose dvc.yaml entry misses a module it imports is not rerun when that module changes, and
its outputs go stale without `dvc status` saying so. The closure is read from the source (every
`import`, at module level or inside a function); importing `agerange.training.data` also runs
`agerange/training/__init__.py` and everything that imports, so a package counts as its
`__init__.py` and what that imports.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

SOURCE_ROOTS = {"agerange": PROJECT_ROOT / "src", "pipelines": PROJECT_ROOT}
# The top-level package holds only its version string; a version bump should not rerun the
# pipeline, so it is left out of every stage's deps (test_the_top_package_imports_nothing keeps
# that true).
TOP_PACKAGE = PROJECT_ROOT / "src" / "agerange" / "__init__.py"
CONFIG = PROJECT_ROOT / "src" / "agerange" / "config.py"  # defines the readers: its calls pass names on
SETTINGS_CALL = re.compile(r"^(load_section|load_params)$")


def known_modules() -> dict[str, Path]:
    """Module name -> file, for the package and the stage scripts."""
    modules = {}
    for top, root in SOURCE_ROOTS.items():
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The known modules a file imports anywhere in it, with the packages above them (which Python
    runs first), relative imports resolved."""
    name = next((n for n, p in modules.items() if p == path), path.stem)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from agerange.training import data` imports the package and its module `data`
            targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `from x import name`: the name is no module
            target = target.rpartition(".")[0]
        while target:  # and every package above it
            found.add(target)
            target = target.rpartition(".")[0]
    return found - {name}


def closure(script: Path, modules: dict[str, Path]) -> set[Path]:
    """Every file of the package and of pipelines/ that running `script` imports."""
    seen, todo = {script}, [script]
    while todo:
        for module in imports_of(todo.pop(), modules):
            path = modules[module]
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return seen - {TOP_PACKAGE}


def settings_read(files: set[Path]) -> set[str]:
    """params.yaml sections read with `load_section("x")` / `load_params("x")` in these files."""
    sections = set()
    for path in files - {CONFIG}:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if SETTINGS_CALL.match(called) and isinstance(getattr(first, "value", None), str):
                sections.add(first.value)
            elif called == "load_section" and isinstance(first, ast.Name):  # `for name in (...)`
                sections |= literal_names_near(path, node)
    return sections


def literal_names_near(path: Path, call: ast.Call) -> set[str]:
    """The section names of `(load_section(name) for name in ("a", "b"))`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.GeneratorExp | ast.ListComp) and node.lineno == call.lineno:
            return {
                element.value
                for generator in node.generators
                if isinstance(generator.iter, ast.Tuple | ast.List)
                for element in generator.iter.elts
                if isinstance(element, ast.Constant)
            }
    raise AssertionError(f"{path}:{call.lineno}: cannot tell which section load_section reads")


def calls(files: set[Path], function: str) -> bool:
    return any(
        isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == function
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
    )


def resolved(text: str, variables: dict) -> str:
    """`${paths.x}` replaced by its value from dvc.yaml's vars (or params.yaml, as DVC does)."""

    def value(match: re.Match) -> str:
        found = variables
        for key in match.group(1).split("."):
            found = found[key]
        return str(found)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def load_stages() -> tuple[dict, dict]:
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    variables = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for entry in pipeline.get("vars", []):
        variables.update(entry)
    return pipeline["stages"], variables


def entry_names(entries: list) -> list[str]:
    """dvc.yaml list entries are names or {name: options}."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []]


def script_stages() -> list[tuple[str, dict, Path]]:
    stages, variables = load_stages()
    found = []
    for name, stage in stages.items():
        match = re.search(r"python\s+(pipelines/\S+\.py)", stage["cmd"])
        if match:
            stage = {**stage, "deps": [resolved(d, variables) for d in entry_names(stage.get("deps"))]}
            found.append((name, stage, PROJECT_ROOT / match.group(1)))
    return found


STAGES = script_stages()


def test_every_stage_runs_a_stage_script():
    stages, _ = load_stages()
    assert len(STAGES) == len(stages) >= 10, "a stage's cmd no longer runs `python pipelines/x.py`"


@pytest.mark.parametrize(("name", "stage", "script"), STAGES, ids=[name for name, _, _ in STAGES])
def test_a_stage_depends_on_exactly_the_code_it_imports(name, stage, script):
    imported = {path.relative_to(PROJECT_ROOT).as_posix() for path in closure(script, known_modules())}
    declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
    folders = [dep for dep in stage["deps"] if dep.startswith(("src/", "pipelines/")) and dep not in declared]
    assert not folders, f"dvc.yaml stage '{name}': list module files, not folders ({folders}): a folder's "
    "__pycache__ changes with every run"
    missing = sorted(imported - declared)
    unused = sorted(declared - imported)
    assert not missing and not unused, (
        f"dvc.yaml stage '{name}': add to deps {missing}; remove from deps (not imported) {unused}"
    )


@pytest.mark.parametrize(("name", "stage", "script"), STAGES, ids=[name for name, _, _ in STAGES])
def test_a_stage_declares_the_settings_it_reads(name, stage, script):
    files = closure(script, known_modules())
    declared = {param.split(".")[0] for param in entry_names(stage.get("params"))}
    missing = sorted(settings_read(files) - declared)
    assert not missing, f"dvc.yaml stage '{name}': add to params the section(s) it reads: {missing}"
    if calls(files, "read_resolved"):  # train and rebalance settings come from the tune stage's file
        _, variables = load_stages()
        assert variables["paths"]["training_config"] in stage["deps"], (
            f"dvc.yaml stage '{name}' reads the resolved training configuration: add it to deps"
        )


def test_the_top_package_imports_nothing():
    tree = ast.parse(TOP_PACKAGE.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)], (
        f"{TOP_PACKAGE} imports code now: stop leaving it out of the stages' deps"
    )


def test_the_closure_follows_function_level_and_package_imports(tmp_path, monkeypatch):
    (tmp_path / "src" / "agerange" / "training").mkdir(parents=True)
    (tmp_path / "pipelines").mkdir()
    files = {
        "src/agerange/__init__.py": "",
        "src/agerange/training/__init__.py": "from agerange.training.recipe import train\n",
        "src/agerange/training/recipe.py": "from . import phases\n",
        "src/agerange/training/phases.py": "import numpy\n",
        "src/agerange/training/data.py": "",
        "src/agerange/config.py": "def f():\n    from agerange import files\n",
        "src/agerange/files.py": "",
        "src/agerange/unused.py": "",
        "pipelines/stage.py": "import agerange.config\nfrom agerange.training.data import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr("tests.code.test_dvc_stages.TOP_PACKAGE", tmp_path / "src/agerange/__init__.py")
    roots = {"agerange": tmp_path / "src", "pipelines": tmp_path}
    monkeypatch.setattr("tests.code.test_dvc_stages.SOURCE_ROOTS", roots)
    found = closure(tmp_path / "pipelines/stage.py", known_modules())
    found = {path.relative_to(tmp_path).as_posix() for path in found}
    assert found == set(files) - {"src/agerange/__init__.py", "src/agerange/unused.py"}


def test_settings_read_sees_a_loop_over_section_names(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        'a = load_section("drift")\nb = config.load_params("split")\n'
        'c, d = (load_section(name) for name in ("tune", "train"))\n'
    )
    assert settings_read({script}) == {"drift", "split", "tune", "train"}
