"""`import keras_rpat` has no side effect but the promised default backend, and the package uses public Keras only.

Each rule runs in a fresh Python (`python -c ...`), since an import happens
once per process: without `KERAS_BACKEND` and with an empty `KERAS_HOME`
unless the test sets them. A rule that needs a working backend uses the one
this suite runs on.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_rpat"
BACKEND = os.environ.get("KERAS_BACKEND", "torch")
HEAVY = ("keras", "torch", "tensorflow", "jax")

# Loads every public name of keras_rpat (the modules of a not-yet-merged name are skipped: test_api checks them).
LOAD_API = (
    "import importlib.util\n"
    "for _n in keras_rpat.__all__:\n"
    "    _m = keras_rpat._NAMES.get(_n, _n)\n"
    "    if _n == '__version__' or importlib.util.find_spec('keras_rpat.' + _m) is not None:\n"
    "        getattr(keras_rpat, _n)\n"
)


def run_python(code, tmp_path, **env):
    """The completed `python -c code` with `env` added to a clean environment (`None` removes a variable)."""
    base = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    base.update(KERAS_HOME=str(tmp_path / "keras_home"), TF_CPP_MIN_LOG_LEVEL="2")
    for k, v in env.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=300)


def last_json(process):
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_import_sets_only_the_default_backend_and_loads_no_framework(tmp_path):
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "import keras_rpat\n"
        "after = dict(os.environ)\n"
        "changed = {k: after.get(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}\n"
        f"print(json.dumps([changed, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    changed, frameworks = last_json(run_python(code, tmp_path))
    assert changed == {"KERAS_BACKEND": "torch"}
    assert frameworks == []


# One fresh process loads the whole API on this suite's backend, with keras.json naming the other backend and
# a sys.argv that records every read made from keras_rpat's files (argv[0] as the command line would have it).
_LOAD_EVERYTHING = (
    "import json, os, sys\n"
    "reads = []\n"
    "class Argv(list):\n"
    "    def _note(self):\n"
    "        caller = sys._getframe(2).f_code.co_filename\n"
    "        if '/keras_rpat/' in caller:\n"
    "            reads.append(caller)\n"
    "    def __getitem__(self, i):\n"
    "        self._note(); return list.__getitem__(self, i)\n"
    "    def __iter__(self):\n"
    "        self._note(); return list.__iter__(self)\n"
    "    def __len__(self):\n"
    "        self._note(); return list.__len__(self)\n"
    "    def __contains__(self, x):\n"
    "        self._note(); return list.__contains__(self, x)\n"
    "sys.argv = Argv(['keras-rpat', '--debug'])\n"
    "import keras_rpat\n"
    "import keras, {framework}\n"  # their own start-up is not keras_rpat's
    "def snapshot():\n"
    "    return {{name: {{k: (id(v), type(v).__qualname__) for k, v in list(vars(m).items())}}\n"
    "            for name, m in list(sys.modules.items()) if name.split('.')[0] == 'keras' and m is not None}}\n"
    "keras_before, env_before = snapshot(), dict(os.environ)\n"
    "keras_rpat.PGD\n"
    "first_name = sorted(sys.modules)\n" + LOAD_API + "keras_after, env_after = snapshot(), dict(os.environ)\n"
    "patched = sorted(f'{{m}}.{{k}}: {{keras_before[m][k][1]}} -> {{keras_after[m].get(k, (0, None))[1]}}'\n"
    "                 for m in keras_before for k in keras_before[m] if keras_after[m].get(k) != keras_before[m][k])\n"
    "env = {{k: env_after.get(k) for k in set(env_before) | set(env_after) if env_before.get(k) != env_after.get(k)}}\n"
    "print(json.dumps(dict(argv_reads=reads, patched=patched, environ=env, backend=keras.config.backend(),\n"
    "                      first_name=first_name)))\n"
)


@pytest.fixture(scope="module")
def everything_loaded(tmp_path_factory):
    home = tmp_path_factory.mktemp("import_purity")
    (home / "keras_home").mkdir()
    other = "tensorflow" if BACKEND != "tensorflow" else "torch"
    (home / "keras_home" / "keras.json").write_text(json.dumps({"backend": other}))
    # Each backend's framework is the module of its name.
    return last_json(run_python(_LOAD_EVERYTHING.format(framework=BACKEND), home, KERAS_BACKEND=BACKEND))


def test_import_and_api_read_no_sys_argv(everything_loaded):
    assert everything_loaded["argv_reads"] == []


def test_loading_the_api_changes_no_environment_variable(everything_loaded):
    assert everything_loaded["environ"] == {}


def test_loading_the_api_patches_no_keras_module(everything_loaded):
    # Every attribute of every Keras module loaded before is the same object, of the same class.
    assert everything_loaded["patched"] == []


def test_an_explicit_keras_backend_wins(everything_loaded):
    # Over keras.json (which names the other backend) and over keras_rpat's default.
    assert everything_loaded["backend"] == BACKEND


@pytest.mark.skipif(BACKEND != "tensorflow", reason="loads Keras on tensorflow: once, in the tensorflow run")
def test_keras_imported_first_keeps_its_backend(tmp_path):
    # No KERAS_BACKEND and an empty KERAS_HOME: Keras' own default, tensorflow.
    code = (
        "import json, os, keras, keras_rpat\n"
        "from keras_rpat import backend\n"
        "print(json.dumps([keras.config.backend(), os.environ.get('KERAS_BACKEND'), backend.get_backend().__name__]))\n"
    )
    assert last_json(run_python(code, tmp_path)) == ["tensorflow", None, "keras_rpat.backend.tensorflow"]


@pytest.mark.parametrize("argv0", ["-c", "keras-rpat"])
def test_an_unsupported_backend_is_an_import_error_that_names_it_and_the_fix(tmp_path, argv0):
    code = (
        "import sys\n"
        f"sys.argv[0] = {argv0!r}\n"
        "import keras_rpat\n"  # nothing to check until the API loads
        "try:\n"
        "    from keras_rpat import PGD\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    # numpy: a Keras backend (inference only) that keras_rpat does not support.
    out = run_python(code, tmp_path, KERAS_BACKEND="numpy")
    assert out.returncode == 0 and "SystemExit" not in out.stderr, out.stderr
    assert out.stdout.strip() == (
        "keras_rpat supports the Keras backends torch, tensorflow and jax. Received: KERAS_BACKEND='numpy'. "
        "Set KERAS_BACKEND=torch (the default), tensorflow or jax before importing Keras, or unset it."
    )


def test_keras_imported_first_on_an_unsupported_backend_is_an_import_error(tmp_path):
    # A stand-in for Keras imported on its numpy backend: only its `config.backend()` is asked.
    code = (
        "import os, sys, types\n"
        "sys.modules['keras'] = types.SimpleNamespace(config=types.SimpleNamespace(backend=lambda: 'numpy'))\n"
        "import keras_rpat\n"
        "assert 'KERAS_BACKEND' not in os.environ\n"  # Keras chose already: no default is set
        "try:\n"
        "    keras_rpat.RPATTrainer\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = run_python(code, tmp_path)
    assert "Received: keras.config.backend()='numpy'" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("how", ["keras-rpat", "python -m keras_rpat"])
def test_the_command_line_refuses_an_unsupported_backend_in_one_line(tmp_path, how):
    command = (
        [os.path.join(os.path.dirname(sys.executable), "keras-rpat")]
        if how == "keras-rpat"
        else [sys.executable, "-m", "keras_rpat"]
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(KERAS_BACKEND="foo", KERAS_HOME=str(tmp_path))
    p = subprocess.run([*command, "recipe", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [
        "Error: keras_rpat supports the Keras backends torch, tensorflow and jax. Received: KERAS_BACKEND='foo'. "
        "Set KERAS_BACKEND=torch (the default), tensorflow or jax before importing Keras, or unset it."
    ]
    debug = subprocess.run(
        [*command, "--debug", "recipe", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ImportError: keras_rpat supports" in debug.stderr


def test_the_first_name_used_registers_every_serializable_class(everything_loaded):
    # Every module that registers a class with Keras is loaded by the first keras_rpat name used.
    registering = sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for path, text in _package_sources().items()
        if "register_keras_serializable" in text
    )
    assert registering and [m for m in registering if m not in everything_loaded["first_name"]] == []


def _package_sources():
    return {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_imports_no_private_keras_module():
    hits = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path, text in _package_sources().items()
        for n, line in enumerate(text.splitlines(), 1)
        if re.search(r"\bkeras\.src\b", line)
    ]
    assert hits == []


PINS = "tests/test_keras_pins.py::"
# Every private Keras name the package uses, by file: each has no public way, a comment where it is used and a pin
# test (the pin file also fails on a Keras release these were not checked on). A name missing here fails below.
PINNED_PRIVATE_KERAS = {
    ("callbacks.py", "_current_epoch"): PINS
    + "test_backup_and_restore_loads_its_backup_in_load_model_and_fit_starts_at_the_epoch_it_names",
    ("callbacks.py", "_load_model"): PINS
    + "test_backup_and_restore_loads_its_backup_in_load_model_and_fit_starts_at_the_epoch_it_names",
    ("callbacks.py", "_training_metadata_path"): PINS
    + "test_backup_and_restore_loads_its_backup_in_load_model_and_fit_starts_at_the_epoch_it_names",
    ("callbacks.py", "_weights_path"): PINS
    + "test_backup_and_restore_loads_its_backup_in_load_model_and_fit_starts_at_the_epoch_it_names",
    ("callbacks.py", "_save_model"): PINS + "test_backup_and_restore_saves_only_from_the_hooks_run_backup_overrides",
    ("fast_path/lowering.py", "_value"): PINS + "test_assigning_a_torch_variables_value_re_stores_it",
    ("fast_path/lowering.py", "_nodes_by_depth"): PINS
    + "test_nodes_by_depth_lists_every_call_of_a_functional_model_with_what_the_lowering_reads",
    ("fast_path/lowering.py", "_functional"): PINS
    + "test_a_built_sequential_model_is_a_functional_model_of_its_layers",
    (
        "trainer.py",
        "_maybe_symbolic_build",
    ): "tests/test_trainer.py::test_the_private_keras_method_the_trainer_overrides_is_the_one_it_was_written_for",
    ("trainer.py", "_use_cached_eval_dataset"): PINS
    + "test_fit_evaluates_its_validation_data_with_the_use_cached_eval_dataset_keyword",
    ("optimizers.py", "_apply_weight_decay"): PINS
    + "test_the_optimizer_methods_sgd_overrides_and_calls_are_the_ones_it_was_written_for",
    ("optimizers.py", "_backend_update_step"): PINS
    + "test_the_optimizer_methods_sgd_overrides_and_calls_are_the_ones_it_was_written_for",
    ("optimizers.py", "_get_variable_index"): PINS
    + "test_the_optimizer_methods_sgd_overrides_and_calls_are_the_ones_it_was_written_for",
    ("optimizers.py", "_use_weight_decay"): PINS
    + "test_the_optimizer_methods_sgd_overrides_and_calls_are_the_ones_it_was_written_for",
}
# Names Keras uses privately that the package defines for itself, on classes where Keras does not.
OWN_NAMES = {"_step", "_values", "_broadcast"}
# Modules the package imported once from Keras' private tree.
PRIVATE_KERAS_MODULES = ("module_utils", "io_utils")


def _keras_private_names():
    """The private names Keras' own classes define or read: methods, `self._x = ...` and keywords `"_x"`."""
    source = pathlib.Path(importlib.util.find_spec("keras").origin).parent / "src"
    names = set()
    for path in source.rglob("*.py"):
        if not path.name.endswith("_test.py"):
            text = path.read_text()
            names.update(re.findall(r"^    (?:    )?def (_[a-z]\w*)\(", text, re.M))
            names.update(re.findall(r"self\.(_[a-z]\w*)\s*=", text))
            names.update(re.findall(r"\.(?:get|pop)\(\s*[\"'](_[a-z]\w*)[\"']", text))
    return names


def _private_names_used(text):
    """`x._name`, methods `def _name(` and `getattr(x, "_name")` / `kwargs.get("_name")` in a package file."""
    return (
        set(re.findall(r"\.(_[a-z]\w*)\b", text))
        | set(re.findall(r"^[ \t]+def (_[a-z]\w*)\(", text, re.M))
        | set(re.findall(r"(?:getattr|hasattr|setattr|\.get|\.pop)\([^)]*?[\"'](_[a-z]\w*)[\"']", text))
    )


def test_the_package_uses_no_private_keras_name_but_the_pinned_ones():
    keras_private = _keras_private_names()
    assert {"_nodes_by_depth", "_value", "_maybe_symbolic_build", "_use_cached_eval_dataset"} <= keras_private
    used = {
        (str(path.relative_to(PACKAGE)), name)
        for path, text in _package_sources().items()
        for name in _private_names_used(text) & keras_private
        if name not in OWN_NAMES
    }
    assert sorted(used - set(PINNED_PRIVATE_KERAS)) == [], "a private Keras name: use public Keras, or pin it"
    assert sorted(set(PINNED_PRIVATE_KERAS) - used) == [], "no longer used: drop it here and its pin"
    modules = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path, text in _package_sources().items()
        for n, line in enumerate(text.splitlines(), 1)
        if re.search(rf"\b({'|'.join(PRIVATE_KERAS_MODULES)})\b", line)
    ]
    assert modules == []


def test_every_pinned_private_keras_name_names_an_existing_pin_test():
    root = PACKAGE.parent
    for pin in set(PINNED_PRIVATE_KERAS.values()):
        path, name = pin.split("::")
        assert re.search(rf"^def {name}\(", (root / path).read_text(), re.M), pin


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's seeding (tensorflow seeds through Keras)")
def test_seeding_a_torch_run_imports_no_tensorflow_and_fixes_the_streams_keras_would(tmp_path):
    """`backend.set_random_seed` leaves TensorFlow unimported on torch, and the streams keras_rpat draws from
    (Python's `random`: a `SeedGenerator(None)`'s seed; NumPy; torch) are those `keras.utils.set_random_seed` gives."""
    code = (
        "import json, random, sys\n"
        "import keras, numpy as np, torch\n"
        "import keras_rpat.backend\n"
        "def draws():\n"
        "    seed = int(keras.ops.convert_to_numpy(keras.random.SeedGenerator(None).state)[0])\n"
        "    return [seed, random.random(), float(np.random.rand()), float(torch.rand(()))]\n"
        "keras_rpat.backend.set_random_seed(7)\n"
        "ours = draws()\n"
        "no_tf = 'tensorflow' not in sys.modules\n"
        "keras.utils.set_random_seed(7)\n"
        "print(json.dumps({'no_tf': no_tf, 'same': ours == draws(), 'ours': ours}))\n"
    )
    found = last_json(run_python(code, tmp_path, KERAS_BACKEND="torch"))
    assert found["no_tf"], found
    assert found["same"], found
