"""The architecture rules of CONTRIBUTING.md, checked on the source.

import-linter's contracts (pyproject.toml `[tool.importlinter]`, `lint-imports`)
fail on an import of a higher layer, a module placed in no layer and an import
cycle in a package. `python tools/import_graph.py` prints the import graph in
layers and fails on what import-linter cannot express: a function-level import
of a package module (other than the listed lazy ones) or a cross-module use of
a `_private` name.
"""

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "import_graph.py"


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_rpat_has_one_way_imports_and_no_private_cross_module_names():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    layer0 = next(line for line in out.stdout.splitlines() if line.strip().startswith("layer 0:"))
    assert {"_checks", "_io", "_progress", "_tensorboard", "_version"} <= set(
        layer0.split(":")[1].replace(",", " ").split()
    )


def test_the_leaves_import_nothing_from_the_package():
    tool = _tool()
    edges, _ = tool.analyse(tool.discover())
    for leaf in ("keras_rpat._io", "keras_rpat._checks", "keras_rpat._version", "keras_rpat._tensorboard"):
        assert edges[leaf] == set(), leaf


def _package(tmp_path, files):
    root = tmp_path / "keras_rpat"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "files, expected",
    [
        (
            {"__init__.py": "", "a.py": "def f():\n    from keras_rpat import b\n", "b.py": ""},
            "imports keras_rpat.b inside a function",
        ),
        (
            {"__init__.py": "", "a.py": "from keras_rpat.b import _x\n", "b.py": "_x = 1\n"},
            "private name keras_rpat.b._x",
        ),
        (
            {"__init__.py": "", "a.py": "from keras_rpat import b as lib\nlib._x\n", "b.py": "_x = 1\n"},
            "private name keras_rpat.b._x",
        ),
    ],
    ids=["function-level import", "from-import of a private name", "private attribute"],
)
def test_the_checker_finds_each_problem(tmp_path, files, expected):
    _, problems = _tool().check(_package(tmp_path, files), lazy={})
    assert any(expected in p for p in problems), problems


LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint_imports(root):
    """The completed `lint-imports` on the keras_rpat package and pyproject.toml in `root`."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_import_linter_keeps_every_contract():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    "path, line, expected",
    [
        (
            "_checks.py",
            "from keras_rpat import trainer\n",
            "keras_rpat._checks is not allowed to import keras_rpat.trainer",
        ),
        ("unplaced.py", "\n", "- keras_rpat.unplaced"),
        ("cli/options.py", "from keras_rpat.cli import train\n", "No cycles are allowed in keras_rpat.cli"),
    ],
    ids=["arrow up", "module in no layer", "cycle in a package"],
)
def test_import_linter_refuses(tmp_path, path, line, expected):
    shutil.copytree(ROOT / "keras_rpat", tmp_path / "keras_rpat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "keras_rpat" / path, "a") as f:
        f.write(line)
    out = lint_imports(tmp_path)
    assert out.returncode == 1 and expected in out.stdout, out.stdout + out.stderr


def test_every_package_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "keras_rpat").rglob("__init__.py")}
    assert on_disk | {"keras_rpat.recipes.files"} == listed


# `trainer._x`, `self.trainer._x`, `getattr(trainer, "_x")` and the like: an engine reaches the
# trainer through its public hooks only (`keras_rpat.backend.engine`).
_PRIVATE_TRAINER_ATTRIBUTE = re.compile(r"\btrainer\._\w|\b(?:get|set|has|del)attr\(\s*(?:self\.)?trainer\s*,\s*[\"']_")


def _private_trainer_uses(folders):
    hits = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _PRIVATE_TRAINER_ATTRIBUTE.search(line):
                    hits.append(f"{path.relative_to(folder.parent)}:{number}: {line.strip()}")
    return hits


def test_no_engine_module_uses_a_private_trainer_attribute():
    """The backend modules and the fast-path runtime neither set nor call a private trainer attribute."""
    folders = [ROOT / "keras_rpat" / name for name in ("backend", "fast_path")]
    assert _private_trainer_uses([f for f in folders if f.is_dir()]) == []


@pytest.mark.parametrize(
    "line",
    ["trainer._unpack(data)", "self.trainer._phase", 'getattr(trainer, "_fast_runtime", None)', "trainer._x = 1"],
)
def test_the_private_trainer_attribute_check_finds_each_form(tmp_path, line):
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "engine.py").write_text(f"x = 1\n{line}\ntrainer.step(x)\n")
    assert _private_trainer_uses([tmp_path / "backend"]) == [f"backend/engine.py:2: {line}"]
