"""The command line starts without the frameworks, and the torch backend never loads TensorFlow.

Start-up *times* live in `benchmarks/cli_startup.py`; here the cause is
checked: which heavy modules a fresh `keras-rpat` process imported (a training
run on torch is checked in `test_run_outputs.py`).
"""

import keras_rpat  # noqa: F401

import pytest
from testing import imported

from keras_rpat import cli


@pytest.mark.parametrize("args", [["--help"], ["--version"]], ids=["help", "version"])
def test_help_and_version_import_no_framework(args):
    modules, out = imported(args)
    assert modules == [], out.stderr
    assert "keras-rpat" in out.stdout


def test_a_mistyped_command_is_refused_without_importing_a_framework():
    modules, out = imported(["tarin"])
    assert modules == []
    assert "Unknown command 'tarin'" in out.stderr and "train" in out.stderr


def test_the_listed_short_help_is_each_commands_own():
    for name, (_, _, short_help) in cli.COMMANDS.items():
        assert cli.load_command(name).get_short_help_str(limit=200) == short_help, name


@pytest.mark.parametrize(
    "args, expected",
    [
        (["recipe", "list"], "table3"),
        (["recipe", "show", "table3"], "Default plan: 24 runs"),
    ],
    ids=["recipe list", "recipe show"],
)
def test_listing_and_showing_recipes_import_no_framework(args, expected):
    modules, out = imported(args)
    assert modules == [], out.stderr
    assert expected in out.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--epochs", "-1"], "-1 is not in the range x>=1"),
        (["train", "--method", "pgd_at", "--proxy", "nose"], "'nose' is not one of 'logits', 'penultimate'"),
        (["train", "--method", "nosuch"], "Unknown preset: 'nosuch'"),
        (["recipe", "table3", "--seeds", "x"], "Seeds must be comma-separated integers"),
        (["recipe", "table3", "--arch", "nosuch"], "Unknown model name: 'nosuch'"),
        (["eval", "{model}", "--dataset", "cifar10", "--attacks", "foo"], "Unknown evaluation 'foo'"),
        (["autoattack", "{model}", "--dataset", "nosuch"], "Unknown dataset 'nosuch'"),
        (["convert", "{model}", "--arch", "nosuch", "--out", "x.keras"], "Unknown model name: 'nosuch'"),
        (["export", "{model}", "--format", "tflite"], "'tflite' is not one of 'torch', 'onnx'"),
        (["demo", "--epochs", "x"], "'x' is not a valid integer"),
    ],
    ids=[
        "train epochs",
        "train choice",
        "train preset",
        "recipe seeds",
        "recipe arch",
        "eval",
        "autoattack",
        "convert",
        "export",
        "demo",
    ],
)
def test_argument_errors_import_no_framework(args, expected, tmp_path):
    model = tmp_path / "model.keras"  # never read: the option error comes first
    model.write_bytes(b"")
    modules, out = imported([a.format(model=model) for a in args])
    assert modules == [], out.stderr
    assert expected in out.stderr


def test_each_dataset_name_has_a_loader():
    from keras_rpat import _names
    from keras_rpat.datasets import loading

    assert set(loading._LOADERS) == set(_names.DATASETS)
