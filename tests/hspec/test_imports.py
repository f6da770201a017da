"""hspec stands alone: importing it loads none of the training stack, and what it imports is exactly
its core dependencies in pyproject.toml (matplotlib only for hspec.plot, as the `plot` extra)."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING_STACK = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "train", "chex", "powerlaw")


def test_import_hspec_loads_no_training_stack_or_plotting():
    code = (
        "import sys, hspec; mods = ('flax', 'optax', 'orbax', 'tensorflow', 'tensorflow_datasets', 'train', "
        "'matplotlib'); print([m for m in mods if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the hspec files importing it (lazy imports inside functions too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "hspec").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "hspec" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.name)
    return found


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_dependencies_are_what_hspec_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    imports = _third_party_imports()
    assert imports.pop("matplotlib") == {"plot.py"}  # lazily, for hspec.plot only
    assert "matplotlib" in _names(project["optional-dependencies"]["plot"])
    # jaxlib is imported by jax, not by hspec; every other core dependency is imported by hspec.
    assert core == set(imports) | {"jaxlib"}
    assert not core & set(TRAINING_STACK)


def test_lanczos_is_the_function_and_krylov_the_module():
    import hspec.krylov

    assert callable(hspec.lanczos) and hspec.lanczos is hspec.krylov.lanczos
    assert hspec.NonFiniteError is hspec.errors.NonFiniteError
