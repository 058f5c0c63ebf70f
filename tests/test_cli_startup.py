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
