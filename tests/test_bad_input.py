"""Bad input, as a new user types it: every value is checked where it enters.

Each case asserts the error type (or the CLI's exit status: 2 for a usage
mistake, 1 for a runtime failure), that the message names the bad value and
the fix, that no traceback is shown, and that nothing was written. The CLI
cases stop before any training or evaluation: the library call that would do
the work is replaced by one that fails the test if it is reached.
"""

import functools
import os
import re
import socket
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import keras_rpat
from keras_rpat import _checks
from keras_rpat import autoattack
from keras_rpat import cli
from keras_rpat import evaluation
from keras_rpat import losses
from keras_rpat import recipes

READ_ONLY = "/sys/keras_rpat_read_only"  # not writable, even by root


class Reached(Exception):
    """The command got past its checks to the work itself."""


def _reached(*args, **kwargs):
    raise Reached(f"{args!r} {kwargs!r}"[:300])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small saved classifier (8x8 RGB, 10 classes) and `.npz` datasets, good and bad."""
    root = tmp_path_factory.mktemp("bad_input")
    rng = np.random.default_rng(0)

    def npz(name, **over):
        arrays = dict(
            x_train=rng.random((8, 8, 8, 3), dtype=np.float32),
            y_train=np.arange(8) % 10,
            x_test=rng.random((8, 8, 8, 3), dtype=np.float32),
            y_test=np.arange(8) % 10,
        )
        arrays.update(over)
        np.savez(root / name, **arrays)
        return str(root / name)

    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3), widths=(4, 4, 4))
    model.save(root / "model.keras")
    (root / "text.keras").write_text("not a model")
    (root / "text.npz").write_text("hello\n")
    (root / "a_file").write_text("x")
    (root / "state.json").write_text("{not json")
    return {
        "root": root,
        "model": str(root / "model.keras"),
        "text_model": str(root / "text.keras"),
        "good": npz("good.npz"),
        "text_npz": str(root / "text.npz"),
        "strings": npz("strings.npz", y_train=np.array(["cat"] * 8), y_test=np.array(["cat"] * 8)),
        "label12": npz("label12.npz", y_test=np.array([0, 1, 2, 12, 3, 4, 5, 6])),
        "pixels255": npz("pixels255.npz", x_test=rng.random((8, 8, 8, 3), dtype=np.float32) * 255),
        "a_file": str(root / "a_file"),
        "bad_state": str(root / "state.json"),
    }


def _run_cli(args, monkeypatch, stub=None):
    if stub == "train":
        monkeypatch.setattr(recipes, "run_single", _reached)
    elif stub == "eval":
        monkeypatch.setattr(evaluation, "evaluate", _reached)
    elif stub == "recipe":
        monkeypatch.setattr(recipes, "run_recipe", _reached)
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _expand(args, files, out):
    """`@key` -> the fixture file `key` (`@key/rest` below it); `OUT` -> the output folder."""

    def one(a):
        head, sep, rest = a.partition("/")
        if head.startswith("@"):
            return str(files[head[1:]]) + sep + rest
        return out + sep + rest if head == "OUT" else a

    return [one(a) for a in args]


TRAIN = ["train", "--method", "trades+rpat", "--dataset", "synthetic", "--smoke", "--out", "OUT"]
TRAIN_PP = ["train", "--method", "rpat_plus_plus", "--dataset", "synthetic", "--smoke", "--out", "OUT"]
TRAIN_PGD = ["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke", "--out", "OUT"]
EVAL = ["eval", "@model", "--dataset", "@good"]
AA = ["autoattack", "@model", "--dataset", "@good"]
RECIPE = ["recipe", "table3", "--smoke", "--out", "OUT"]

# (id, arguments, the command's work that must not be reached, exit status, words the message must contain)
CLI_CASES = [
    # zero is a value, not "unset": it reaches the check and is refused where it is out of range
    ("train-alpha-0", TRAIN + ["--alpha", "0"], "train", 2, ["alpha", "Received: 0", "(0, 1)"]),
    ("train-lr-factor-0", TRAIN_PP + ["--lr-factor", "0"], "train", 2, ["lr_factor", ">= 1", "Received: 0"]),
    ("train-beta-negative", TRAIN_PP + ["--beta", "-1"], "train", 2, ["beta", ">= 0", "-1"]),
    ("train-beta-nan", TRAIN_PP + ["--beta", "nan"], "train", 2, ["beta", "nan"]),
    ("train-alpha-above-1", TRAIN + ["--alpha", "1.5"], "train", 2, ["alpha", "1.5", "(0, 1)"]),
    ("train-alpha-text", TRAIN + ["--alpha", "abc"], "train", 2, ["--alpha", "'abc'", "float"]),
    ("train-l2-step-zero-denominator", TRAIN + ["--norm", "l2", "--l2-step-size", "8/0"], "train", 2, ["8/0", "zero"]),
    ("train-l2-step-zero", TRAIN + ["--norm", "l2", "--l2-step-size", "0"], "train", 2, ["--l2-step-size", "> 0"]),
    ("train-method-unknown", ["train", "--method", "foo", "--dataset", "synthetic"], "train", 2, ["'foo'", "pgd_at"]),
    ("train-dataset-unknown", ["train", "--method", "pgd_at", "--dataset", "foo"], "train", 2, ["'foo'", "cifar10"]),
    ("train-arch-unknown", TRAIN_PGD + ["--arch", "foo"], "train", 2, ["'foo'", "resnet18"]),
    ("train-norm-unknown", TRAIN_PGD + ["--norm", "foo"], "train", 2, ["'foo'", "linf"]),
    ("train-epochs-0", TRAIN_PGD + ["--epochs", "0"], "train", 2, ["--epochs", "0", ">=1"]),
    ("train-seed-negative", TRAIN_PGD + ["--seed", "-1"], "train", 2, ["--seed", "-1"]),
    ("train-batch-size-0", TRAIN_PGD + ["--batch-size", "0"], "train", 2, ["--batch-size", "0"]),
    ("train-eval-attacks-unknown", TRAIN_PGD + ["--eval-attacks", "foo"], "train", 2, ["'foo'", "pgd20"]),
    ("train-checkpoints-unknown", TRAIN_PGD + ["--checkpoints", "foo"], "train", 2, ["'foo'", "best, final"]),
    ("train-checkpoint-every-0", TRAIN_PGD + ["--checkpoint-every", "0"], "train", 2, ["--checkpoint-every", "0"]),
    ("recipe-checkpoint-every-text", RECIPE + ["--checkpoint-every", "x"], "recipe", 2, ["--checkpoint-every", "'x'"]),
    ("train-alpha-without-rpat", TRAIN_PGD + ["--alpha", "0.3"], "train", 2, ["alpha", "pgd_at", "+rpat"]),
    ("train-beta-on-trades", TRAIN + ["--beta", "2"], "train", 2, ["beta", "RPAT++"]),
    ("train-out-under-a-file", TRAIN_PGD[:-1] + ["@a_file/run"], "train", 2, ["a_file", "is a file"]),
    ("train-out-read-only", TRAIN_PGD[:-1] + [READ_ONLY + "/run"], "train", 2, [READ_ONLY, "not writable"]),
    ("train-out-is-a-file", TRAIN_PGD[:-1] + ["@a_file"], "train", 2, ["a_file", "is a file"]),
    (
        "train-npz-missing",
        ["train", "--method", "pgd_at", "--dataset", "OUT/none.npz", "--out", "OUT"],
        None,
        1,
        ["none.npz", "not found"],
    ),
    (
        "train-npz-not-npz",
        ["train", "--method", "pgd_at", "--dataset", "@text_npz", "--out", "OUT", "--epochs", "1"],
        None,
        1,
        ["text.npz", "not an .npz file", "np.savez"],
    ),
    # budgets are pixel fractions: above 1 is a unit mistake
    ("eval-epsilon-300/255", EVAL + ["--epsilon", "300/255"], "eval", 2, ["epsilon=1.17647 (= 300/255)", "<= 1"]),
    ("eval-epsilon-8", EVAL + ["--epsilon", "8"], "eval", 2, ["epsilon=8", "Did you mean 8/255"]),
    ("eval-step-size-2", EVAL + ["--step-size", "2"], "eval", 2, ["step_size=2", "Did you mean 2/255"]),
    ("eval-epsilon-zero-denominator", EVAL + ["--epsilon", "8/0"], "eval", 2, ["'8/0'", "zero", "8/255"]),
    ("eval-epsilon-0", EVAL + ["--epsilon", "0"], "eval", 2, ["--epsilon", "> 0", "Received: 0"]),
    ("eval-epsilon-negative", EVAL + ["--epsilon", "-1"], "eval", 2, ["--epsilon", "Received: -1"]),
    ("eval-epsilon-text", EVAL + ["--epsilon", "abc"], "eval", 2, ["'abc'", "8/255"]),
    ("eval-epsilon-nan", EVAL + ["--epsilon", "nan"], "eval", 2, ["--epsilon", "nan"]),
    ("eval-epsilon-inf", EVAL + ["--epsilon", "inf"], "eval", 2, ["--epsilon", "inf", "> 0 and finite"]),
    ("eval-num-steps-0", EVAL + ["--num-steps", "0"], "eval", 2, ["--num-steps", "0"]),
    ("eval-n-0", EVAL + ["--n", "0"], "eval", 2, ["--n", "0"]),
    ("eval-n-too-large", EVAL + ["--n", "100"], "eval", 2, ["n=100", "at most", "(8)"]),
    (
        "eval-model-missing",
        ["eval", "OUT/none.keras", "--dataset", "@good"],
        "eval",
        2,
        ["none.keras", "does not exist"],
    ),
    (
        "eval-model-not-keras",
        ["eval", "@text_model", "--dataset", "@good"],
        "eval",
        1,
        ["text.keras", ".keras archive"],
    ),
    ("eval-npz-not-npz", ["eval", "@model", "--dataset", "@text_npz"], "eval", 2, ["text.npz", "not an .npz file"]),
    ("eval-labels-strings", ["eval", "@model", "--dataset", "@strings"], "eval", 2, ["'cat'", "np.unique"]),
    ("eval-label-out-of-range", ["eval", "@model", "--dataset", "@label12"], "eval", 1, ["[3]=12", "[0, 10)", "Remap"]),
    ("eval-pixels-0-255", ["eval", "@model", "--dataset", "@pixels255"], "eval", 2, ["[0, 1]", "divide by 255"]),
    ("eval-out-is-a-folder", EVAL + ["--out", "@root"], "eval", 2, ["is a folder", "result.json"]),
    ("eval-out-read-only", EVAL + ["--out", READ_ONLY + "/r.json"], "eval", 2, [READ_ONLY, "not writable"]),
    ("eval-state-read-only", EVAL + ["--state", READ_ONLY + "/s.json"], "eval", 2, [READ_ONLY, "not writable"]),
    (
        "eval-state-corrupt",
        EVAL + ["--attacks", "autoattack", "--state", "@bad_state"],
        None,
        1,
        ["state.json", "Delete it"],
    ),
    ("eval-attacks-unknown", EVAL + ["--attacks", "foo"], "eval", 2, ["'foo'", "pgd20"]),
    ("aa-option-not-a-number", AA + ["--option", "apgd.n_iter=abc"], "eval", 2, ["apgd.n_iter='abc'", "number"]),
    ("aa-option-zero", AA + ["--option", "apgd.n_iter=0"], "eval", 2, ["apgd.n_iter=0", ">= 1"]),
    ("aa-option-component", AA + ["--option", "bogus.x=1"], "eval", 2, ["'bogus'", "apgd"]),
    ("aa-option-shape", AA + ["--option", "foo"], "eval", 2, ["'foo'", "COMPONENT.SETTING=VALUE"]),
    ("aa-epsilon-8", AA + ["--epsilon", "8"], "eval", 2, ["epsilon=8", "Did you mean 8/255"]),
    ("aa-attacks-unknown", AA + ["--attacks", "foo"], "eval", 2, ["'foo'", "apgd-ce"]),
    ("recipe-unknown", ["recipe", "foo"], "recipe", 2, ["'foo'", "table3"]),
    ("recipe-seeds-text", RECIPE + ["--seeds", "abc"], "recipe", 2, ["'abc'", "0,1,2"]),
    ("recipe-epochs-0", RECIPE + ["--epochs", "0"], "recipe", 2, ["--epochs", "0"]),
    ("recipe-method-unknown", RECIPE + ["--method", "foo"], "recipe", 2, ["'foo'", "rebat"]),
    ("recipe-out-read-only", RECIPE[:-1] + [READ_ONLY + "/r"], "recipe", 2, [READ_ONLY, "not writable"]),
]


@pytest.mark.parametrize("args, stub, status, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input(args, stub, status, words, files, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    before = _listing(files["root"])
    result = _run_cli(_expand(args, files, out), monkeypatch, stub)
    assert not isinstance(result.exception, Reached), f"the bad value got through: {result.exception}"
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    message = result.output[result.output.index("Error:") :]
    for word in words:
        assert word in message, (word, message)
    assert not os.path.exists(out), "something was written"
    assert _listing(files["root"]) == before


def test_zero_is_a_value_not_unset():
    spec = recipes.single_run("rpat_plus_plus", "synthetic", smoke=True, beta=0.0)
    assert spec.options["beta"] == 0.0
    spec = recipes.single_run("trades+rpat", "synthetic", smoke=True, alpha=0.25)
    assert spec.options["alpha"] == 0.25


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(files, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluation, "evaluate", fail)
    args = ["eval", files["model"], "--dataset", files["good"]]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: [Errno 28] No space left on device (rerun with keras-rpat --debug" in result.output
    debug = CliRunner().invoke(cli.main, ["--debug", *args])
    assert isinstance(debug.exception, OSError)  # raised, so Python prints the traceback


@pytest.mark.parametrize("backend", ["jax", "foo"])
def test_unsupported_backend_is_one_line(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = os.path.join(os.path.dirname(sys.executable), "keras-rpat")
    p = subprocess.run([command, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert (
        f"Error: keras_rpat supports the Keras backends torch and tensorflow. Received: KERAS_BACKEND='{backend}'"
        in (p.stderr)
    )
    assert "KERAS_BACKEND=torch" in p.stderr
    p = subprocess.run(
        [sys.executable, "-c", "import keras_rpat"], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1 and "ImportError: keras_rpat supports" in p.stderr


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------

Z = np.zeros((4, 10), np.float32)
Y = np.array([0, 1, 2, 3])

API_CASES = [
    (
        "pgd-epsilon-8",
        lambda: keras_rpat.attacks.PGD("linf", epsilon=8, step_size=2 / 255),
        "epsilon=8. Did you mean 8/255",
    ),
    ("pgd-step-2", lambda: keras_rpat.attacks.PGD("linf", step_size=2), "step_size=2. Did you mean 2/255"),
    (
        "pgd-epsilon-300/255",
        lambda: keras_rpat.attacks.PGD("linf", epsilon=300 / 255),
        r"epsilon=1.17647 \(= 300/255\)",
    ),
    ("fgsm-epsilon-8", lambda: keras_rpat.attacks.FGSM(epsilon=8), "Did you mean 8/255"),
    ("noise-epsilon-8", lambda: keras_rpat.attacks.RandomNoise(epsilon=8), "Did you mean 8/255"),
    ("pgd-epsilon-zero-denominator", lambda: keras_rpat.attacks.PGD("linf", epsilon="8/0"), "divides by zero.*'8/0'"),
    ("pgd-epsilon-inf", lambda: keras_rpat.attacks.PGD("linf", epsilon=float("inf")), "finite number > 0"),
    ("pgd-num-steps-nan", lambda: keras_rpat.attacks.PGD("linf", num_steps=float("nan")), "num_steps=nan"),
    ("pgd-num-steps-text", lambda: keras_rpat.attacks.PGD("linf", num_steps="ten"), "num_steps='ten'"),
    ("trades-beta-negative", lambda: keras_rpat.losses.TRADES(beta=-1), r"`beta` must be >= 0. Received: beta=-1"),
    ("trades-beta-text", lambda: keras_rpat.losses.TRADES(beta="abc"), "beta='abc'"),
    ("trades-beta-nan", lambda: keras_rpat.losses.TRADES(beta=float("nan")), "finite number. Received: beta=nan"),
    ("mart-beta-negative", lambda: keras_rpat.losses.MART(beta=-1), "beta=-1"),
    ("boat-beta-negative", lambda: keras_rpat.losses.BoAT(beta=-1), "beta=-1"),
    ("rpatpp-beta-negative", lambda: keras_rpat.losses.RPATPlusPlus(beta=-1), "beta=-1"),
    ("rp-weight-negative", lambda: keras_rpat.losses.RobustPerception(weight=-1), "weight=-1"),
    ("rp-alpha-1", lambda: keras_rpat.losses.RobustPerception(alpha=1), r"alpha.*< 1. Received: alpha=1"),
    ("consistency-weight-negative", lambda: keras_rpat.losses.Consistency(weight=-1), "weight=-1"),
    (
        "trades-missing-clean-kl",
        lambda: keras_rpat.losses.TRADES()(Y, {"clean": Z, "adv": Z}),
        r"missing \['clean_kl'\].*reuse_clean_forward",
    ),
    (
        "rp-missing-interp",
        lambda: keras_rpat.losses.RobustPerception()(Y, {"clean": Z, "adv": Z}),
        r"missing \['interp'\].*RobustPerception",
    ),
    (
        "rp-missing-proxy-view",
        lambda: keras_rpat.losses.RobustPerception(proxy="penultimate")(Y, {"clean": Z, "adv": Z, "interp": Z}),
        r"'interp:penultimate'",
    ),
    ("loss-given-a-tensor", lambda: keras_rpat.losses.TRADES()(Y, Z), "dict of views.*not a ndarray"),
    ("aa-options-text", lambda: autoattack.check_options({"apgd": {"n_iter": "abc"}}), "apgd.n_iter='abc'"),
    ("aa-options-unknown", lambda: autoattack.check_options({"apgd": {"bogus": 1}}), "no setting 'bogus'.*n_iter"),
    (
        "evaluate-num-steps-0",
        lambda: evaluation.evaluate(lambda x: x, Z, Y, attacks=["pgd20"], num_steps=0),
        "num_steps=0",
    ),
    ("aa-options-negative", lambda: autoattack.check_options({"square": {"n_queries": -5}}), "square.n_queries=-5"),
    ("labels-out-of-range", lambda: _checks.validate_labels([0, 1, 12, 3], 10), r"\[0, 10\).*y\[2\]=12"),
    ("labels-strings", lambda: _checks.validate_labels(np.array(["cat", "dog"]), 10), "'cat'.*np.unique"),
    ("labels-soft-float", lambda: _checks.validate_labels(np.array([0.5, 1.0]), 10), r"y\[0\]=0.5.*argmax"),
    ("out-dir-is-a-file", lambda: _checks.check_writable_dir(__file__, "out"), "is a file"),
    ("out-file-is-a-folder", lambda: _checks.check_writable_file(os.path.dirname(__file__), "out"), "is a folder"),
    ("out-read-only", lambda: _checks.check_writable_dir(READ_ONLY, "out"), "not writable"),
]


@pytest.mark.parametrize("make, match", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_fit_names_the_label_out_of_range():
    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3), widths=(4, 4, 4))
    trainer = keras_rpat.RPATTrainer(model)
    trainer.compile(optimizer="sgd")
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"\[0, 10\). Received y\[1\]=12"):
        trainer.fit(x, np.array([0, 12, 2, 3]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"y\[0\]='cat'"):
        trainer.fit(x, np.array(["cat"] * 4), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"epsilon=8. Did you mean 8/255"):
        evaluation.evaluate(model, x, np.array([0, 1, 2, 3]), attacks=["pgd20"], epsilon=8)
    with pytest.raises(ValueError, match=r"y\[1\]=12"):
        evaluation.evaluate(model, x, np.array([0, 12, 2, 3]), attacks=["clean"])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_trainer_names_the_setting_that_produces_a_view():
    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3), widths=(4, 4, 4))
    with pytest.raises(ValueError, match="needs an attack"):
        keras_rpat.RPATTrainer(model, losses=[losses.TRADES()])
    value = losses.TRADES(reuse_clean_forward=True)(Y, {"clean": Z, "adv": Z})  # every view it needs
    assert keras.ops.convert_to_numpy(value) == pytest.approx(np.log(10), rel=1e-5)


@pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="imports tensorflow-datasets (tensorflow), cheap on that backend only",
)
def test_offline_download_fails_fast_names_the_fix_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    def unreachable(address, timeout=None, *args, **kwargs):
        assert timeout is not None and timeout <= 10  # never the system's minutes-long default
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    folder = tmp_path / "tensorflow_datasets"
    with pytest.raises(RuntimeError, match=r"Could not download 'cifar10': the network is unreachable") as e:
        keras_rpat.datasets.load("cifar10", data_dir=str(folder))
    assert str(folder) in str(e.value) and ".npz" in str(e.value) and "tfds build cifar10" in str(e.value)
    assert not folder.exists()


# ---------------------------------------------------------------------------
# --- API census (issue 19) ---
# The cases of tools/census_api.py that were not answered clearly before: each is
# now refused with a message naming the value and the fix, or warned about.
# ---------------------------------------------------------------------------


@functools.cache
def _tiny():
    """A small classifier: 8x8 RGB, 10 classes."""
    return keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3), widths=(4, 4, 4))


@functools.cache
def _tiny_softmax():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _x(n=4):
    return np.random.default_rng(0).random((n, 8, 8, 3), dtype=np.float32)


def _x_uint8(n=4):
    return (_x(n) * 255).astype(np.uint8)


def _y(n=4):
    return np.arange(n) % 10


def _trainer(classifier=None, **kwargs):
    trainer = keras_rpat.RPATTrainer(
        classifier or _tiny(), attack=keras_rpat.attacks.PGD(num_steps=1), fast_path=False, **kwargs
    )
    trainer.compile(optimizer="sgd")
    return trainer


def _fit(trainer=None, x=None, y=None, **kwargs):
    trainer = trainer or _trainer()
    x, y = _x() if x is None else x, _y() if y is None else y
    return trainer.fit(x, y, **{"epochs": 1, "batch_size": 4, "verbose": 0, **kwargs})


def _one_class_npz(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, x_train=_x_uint8(8), y_train=np.zeros(8), x_test=_x_uint8(8), y_test=np.zeros(8))
    return keras_rpat.datasets.load(str(path))


UINT8 = r"x.dtype=uint8\); convert with .*/ 255"

# (id, call, pattern of the error message); `tmp_path` is passed to calls that take it
API_CENSUS_ERRORS = [
    # L2 unit slips: 128 is 128/255
    ("pgd-l2-epsilon-128", lambda: keras_rpat.attacks.PGD("l2", epsilon=128), r"epsilon=128. Did you mean 128/255\?"),
    (
        "pgd-l2-step-32",
        lambda: keras_rpat.attacks.PGD("l2", epsilon=128 / 255, step_size=32),
        r"step_size=32. Did you mean 32/255\?",
    ),
    (
        "presets-l2-step-32",
        lambda: keras_rpat.presets.get("pgd_at", norm="l2", l2_step_size=32),
        r"l2_step_size=32. Did you mean 32/255\?",
    ),
    (
        "evaluate-l2-epsilon-128",
        lambda: evaluation.evaluate(_tiny(), _x(), _y(), attacks=["clean"], norm="l2", epsilon=128),
        r"published L2 threat models stop at 3.0.*epsilon=128. Did you mean 128/255\?",
    ),
    (
        "autoattack-l2-epsilon-128",
        lambda: autoattack.run_autoattack(_tiny(), _x(), _y(), norm="l2", epsilon=128),
        r"epsilon=128. Did you mean 128/255\?.*allow_large_l2_budgets",
    ),
    (
        "single-run-l2-step-32",
        lambda: recipes.single_run("pgd_at", "synthetic", norm="l2", smoke=True, l2_step_size=32),
        r"l2_step_size=32. Did you mean 32/255\?",
    ),
    # integer images at every entry
    ("trainer-evaluate-uint8", lambda: _trainer().evaluate(_x_uint8(), _y(), verbose=0), UINT8),
    (
        "trainer-evaluate-0-255-floats",
        lambda: _trainer().evaluate(_x_uint8().astype("float32"), _y(), verbose=0),
        r"max=2\d\d. If the images are in \[0, 255\], divide by 255",
    ),
    ("fit-validation-data-uint8", lambda: _fit(validation_data=(_x_uint8(), _y())), UINT8),
    ("trainer-predict-uint8", lambda: _trainer().predict(_x_uint8(), verbose=0), UINT8),
    (
        "attack-call-uint8-tensor",
        lambda: keras_rpat.attacks.PGD(num_steps=1)(_tiny(), keras.ops.convert_to_tensor(_x_uint8()), _y()),
        r"x.dtype=uint8\); convert with keras.ops.cast\(x, 'float32'\) / 255",
    ),
    (
        "attack-perturb-uint8",
        lambda: keras_rpat.attacks.PGD(num_steps=1).perturb(_tiny(), _x_uint8(), _y()),
        r"x.dtype=uint8\)",
    ),
    (
        "noise-perturb-uint8",
        lambda: keras_rpat.attacks.RandomNoise().perturb(_tiny(), _x_uint8(), _y()),
        r"x.dtype=uint8\)",
    ),
    (
        "robust-evaluation-uint8",
        lambda: keras_rpat.callbacks.RobustEvaluation(_x_uint8(), _y()),
        r"x_test.dtype=uint8\); convert with x_test.astype\('float32'\) / 255",
    ),
    # one class, batch size 0, epochs 0, a channels-first input shape
    (
        "models-one-class",
        lambda: keras_rpat.models.get("small_cnn", num_classes=1),
        r"integer >= 2 \(a one-class classifier is always right.*num_classes=1",
    ),
    ("npz-one-class", _one_class_npz, r"one.npz: the labels hold one class \(0\).*num_classes="),
    (
        "fit-batch-size-0",
        lambda: _fit(batch_size=0),
        r"`batch_size` must be a positive integer. Received: batch_size=0",
    ),
    (
        "fit-batch-size-negative",
        lambda: _fit(batch_size=-4),
        r"`batch_size` must be a positive integer. Received: batch_size=-4",
    ),
    ("fit-epochs-0", lambda: _fit(epochs=0), r"`epochs` must be a positive integer. Received: epochs=0"),
    (
        "models-input-shape-channels-first",
        lambda: keras_rpat.models.get("small_cnn", input_shape=(3, 32, 32), data_format="channels_last"),
        r"32 channels.*input_shape=\(3, 32, 32\). It looks channels_first: pass data_format='channels_first', "
        r"or input_shape=\(32, 32, 3\)",
    ),
    (
        "models-input-shape-channels-last",
        lambda: keras_rpat.models.get("small_cnn", input_shape=(32, 32, 3), data_format="channels_first"),
        r"It looks channels_last: pass data_format='channels_last', or input_shape=\(3, 32, 32\)",
    ),
    (
        "models-input-shape-4-channels",
        lambda: keras_rpat.models.get("small_cnn", input_shape=(32, 32, 4)),
        r"4 channels.*must have 1 or 3. Received: input_shape=\(32, 32, 4\)",
    ),
    # attacks
    ("pgd-random-start-text", lambda: keras_rpat.attacks.PGD(random_start="no"), r"True or False.*random_start='no'"),
    ("pgd-training-text", lambda: keras_rpat.attacks.PGD(training="False"), r"True or False.*training='False'"),
    (
        "pgd-schedule-epoch-text",
        lambda: keras_rpat.attacks.PGD(schedule={"ten": {"num_steps": 12}}),
        r"non-negative epoch \(an integer\).*Received the epoch 'ten'",
    ),
    (
        "attack-labels-out-of-range",
        lambda: keras_rpat.attacks.PGD(num_steps=1)(_tiny(), _x(), np.array([0, 1, 12, 3])),
        r"\[0, 10\). Received y\[2\]=12",
    ),
    (
        "attack-length-mismatch",
        lambda: keras_rpat.attacks.PGD(num_steps=1)(_tiny(), _x(), _y(3)),
        r"differ in length: x.shape=\(4, 8, 8, 3\), y.shape=\(3,\)",
    ),
    # the trainer
    (
        "trainer-loss-weights-text",
        lambda: _trainer(losses=[losses.AdversarialCrossEntropy()], loss_weights=["a"]),
        r"loss_weights='a'",
    ),
    (
        "trainer-loss-weights-nan",
        lambda: _trainer(losses=[losses.AdversarialCrossEntropy()], loss_weights=[float("nan")]),
        r"loss_weights=nan",
    ),
    (
        "trainer-loss-weights-negative",
        lambda: _trainer(losses=[losses.AdversarialCrossEntropy()], loss_weights=[-1.0]),
        r"`loss_weights` must be >= 0. Received: loss_weights=-1",
    ),
    (
        "trainer-weight-averaging-text",
        lambda: _trainer(weight_averaging="yes"),
        r"keras_rpat.WeightAveraging, True.*Received: weight_averaging='yes'",
    ),
    (
        "fit-wrong-image-size",
        lambda: _fit(x=np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)),
        r"expects inputs of shape \(None, 8, 8, 3\) but the images have shape \(4, 16, 16, 3\)",
    ),
    (
        "trainer-evaluate-labels-out-of-range",
        lambda: _trainer().evaluate(_x(), np.array([0, 12, 2, 3]), verbose=0),
        r"\[0, 10\). Received y\[1\]=12",
    ),
    (
        "fit-validation-labels-out-of-range",
        lambda: _fit(validation_data=(_x(), np.array([0, 12, 2, 3]))),
        r"\[0, 10\). Received y\[1\]=12",
    ),
    # evaluation, AutoAttack, callbacks
    ("mean-nrr-above-100", lambda: evaluation.mean_nrr(150, 40), r"in \[0, 100\]. Received: clean=150"),
    (
        "autoattack-batch-size-text",
        lambda: autoattack.run_autoattack(_tiny(), _x(), _y(), batch_size="a"),
        r"positive integer. Received: batch_size='a'",
    ),
    (
        "autoattack-seed-text",
        lambda: autoattack.run_autoattack(_tiny(), _x(), _y(), seed="x"),
        r"`seed` must be an integer or None. Received: seed='x'",
    ),
    (
        "robust-evaluation-length-mismatch",
        lambda: keras_rpat.callbacks.RobustEvaluation(_x(), _y(3)),
        r"differ in length. Received: len\(x_test\)=4, len\(y_test\)=3",
    ),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in API_CENSUS_ERRORS], ids=[c[0] for c in API_CENSUS_ERRORS])
def test_api_census_refuses(call, match, tmp_path):
    before = [w.copy() for w in _tiny().get_weights()]
    with pytest.raises(ValueError, match=match):
        call(tmp_path) if call.__code__.co_argcount else call()
    assert all(np.array_equal(a, b) for a, b in zip(before, _tiny().get_weights())), "the model was trained"


API_CENSUS_WARNINGS = [
    (
        "presets-l2-step-with-linf",
        lambda: keras_rpat.presets.get("pgd_at", norm="linf", l2_step_size=15 / 255),
        r"`l2_step_size` applies to norm='l2' only, and is ignored for norm='linf'",
    ),
    (
        "evaluate-binary-after-cast",
        lambda: evaluation.evaluate(_tiny(), (_x() > 0.5).astype("float32"), _y(), attacks=["clean"]),
        r"`x` holds only the pixel values 0 and 1.*astype\('float32'\) / 255",
    ),
    ("fit-softmax-model", lambda: _fit(_trainer(_tiny_softmax())), r"ends in a softmax.*take logits"),
    (
        "attack-softmax-model",
        lambda: keras_rpat.attacks.PGD(num_steps=1)(_tiny_softmax(), _x(), _y()),
        r"ends in a softmax.*Remove the final softmax",
    ),
    (
        "trainer-evaluate-softmax-model",
        lambda: _trainer(_tiny_softmax()).evaluate(_x(), _y(), verbose=0),
        r"ends in a softmax",
    ),
    (
        "fit-one-class-labels",
        lambda: _fit(y=np.zeros(4, np.int64)),
        r"The training labels `y` hold one class \(0\) of the model.s 10",
    ),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in API_CENSUS_WARNINGS], ids=[c[0] for c in API_CENSUS_WARNINGS])
def test_api_census_warns_once(call, match):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    ours = [w for w in caught if issubclass(w.category, UserWarning) and re.search(match, str(w.message))]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "\n" not in str(ours[0].message)
    assert ours[0].filename == __file__, "the warning points at the library, not at the caller"


def test_api_census_good_input_is_quiet():
    """No false alarm: the legal inputs next to the census cases run without one of its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_rpat.attacks.PGD("l2", epsilon=3.0, step_size=0.5)  # ImageNet's largest common L2 budget
        keras_rpat.attacks.PGD("l2", epsilon=10.0)
        keras_rpat.presets.get("pgd_at", norm="l2", l2_step_size=15 / 255)
        trainer = _trainer()
        _fit(trainer, validation_data=(_x(), _y()))
        trainer.evaluate(_x(), _y(), verbose=0)
        trainer.predict(_x(), verbose=0)
        keras_rpat.attacks.PGD(num_steps=1)(_tiny(), _x(), _y())
        evaluation.evaluate(_tiny(), np.zeros((4, 8, 8, 3), np.float32), _y(), attacks=["clean"])
        keras_rpat.models.get("small_cnn", input_shape=(3, 8, 8), data_format="channels_first", widths=(4, 4, 4))
        keras_rpat.models.get("small_cnn", input_shape=(8, 8, 1), widths=(4, 4, 4))
    ours = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "keras_rpat" in w.filename]
    assert not [m for m in ours if re.search("softmax|0 and 1|one class|l2_step_size", m)], ours


def test_large_l2_budget_when_forced():
    with pytest.raises(ValueError, match="allow_large_l2_budgets"):
        keras_rpat.attacks.PGD("l2", epsilon=10.5)
    keras_rpat.attacks.allow_large_l2_budgets()
    try:
        assert keras_rpat.attacks.PGD("l2", epsilon=128, step_size=32).epsilon == 128
    finally:
        keras_rpat.attacks.allow_large_l2_budgets(False)
    with pytest.raises(ValueError, match="Did you mean 128/255"):
        keras_rpat.attacks.PGD("l2", epsilon=128)


@pytest.mark.skipif(keras.config.backend() != "torch", reason="TorchBridge is the torch backend's")
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_torch_bridge_gradients_are_contiguous_nchw(data_format):
    """A torch attack that flattens the input gradient with `.view()`, as torchattacks' PGDL2 does."""
    import torch

    from keras_rpat.autoattack.torch_bridge import TorchBridge

    shape = (8, 8, 3) if data_format == "channels_last" else (3, 8, 8)
    model = keras_rpat.models.get(
        "small_cnn", num_classes=10, input_shape=shape, data_format=data_format, widths=(4, 4, 4)
    )
    bridge = TorchBridge(model)

    def l2_step(x, y, step=0.1):  # one step of a minimal torch L2 attack
        x = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(bridge(x), y)
        grad = torch.autograd.grad(loss, x)[0]
        norms = grad.view(len(x), -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
        return (x + step * grad / norms).detach(), grad

    x = torch.rand(2, 3, 8, 8)
    y = torch.tensor([0, 1])
    x_adv, grad = l2_step(x, y)
    assert grad.is_contiguous() and grad.shape == (2, 3, 8, 8)
    # the same gradient as through a plain permute (only the memory layout differs)
    x_plain = x.clone().requires_grad_(True)
    inputs = x_plain.permute(0, 2, 3, 1) if data_format == "channels_last" else x_plain
    plain_loss = torch.nn.functional.cross_entropy(model(inputs, training=False), y)
    expected = torch.autograd.grad(plain_loss, x_plain)[0]
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    step = (x_adv - x).reshape(2, -1).norm(dim=1)
    torch.testing.assert_close(step, torch.full((2,), 0.1), rtol=1e-5, atol=0)
