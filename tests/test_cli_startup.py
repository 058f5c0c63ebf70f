"""The command line starts without the frameworks, and the torch backend never loads TensorFlow.

Start-up *times* live in `benchmarks/cli_startup.py`; here the cause is
checked: which heavy modules a fresh `keras-rpat` process imported.
"""

import json
import os
import subprocess
import sys

import keras_rpat  # noqa: F401

import pytest
from testing import torch_only

from keras_rpat import cli

# Runs the command line in a fresh process and prints the heavy modules it imported.
PROBE = (
    "import sys, json\n"
    "from keras_rpat.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], prog_name='keras-rpat', standalone_mode=False)\n"
    "finally:\n"
    "    print('IMPORTED', json.dumps(sorted(m for m in ('keras', 'torch', 'tensorflow') if m in sys.modules)))\n"
)


def _imported(args, cwd=None, backend=None):
    env = dict(os.environ, KERAS_BACKEND=backend or os.environ.get("KERAS_BACKEND", "torch"))
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=cwd)
    line = [x for x in out.stdout.splitlines() if x.startswith("IMPORTED ")]
    assert line, out.stdout + out.stderr
    return json.loads(line[-1][len("IMPORTED ") :]), out


@pytest.mark.parametrize("args", [["--help"], ["--version"]], ids=["help", "version"])
def test_help_and_version_import_no_framework(args):
    imported, out = _imported(args)
    assert imported == [], out.stderr
    assert "keras-rpat" in out.stdout


def test_a_mistyped_command_is_refused_without_importing_a_framework():
    imported, out = _imported(["tarin"])
    assert imported == []
    assert "Unknown command 'tarin'" in out.stderr and "train" in out.stderr


def test_the_listed_short_help_is_each_commands_own():
    for name, (_, _, short_help) in cli.COMMANDS.items():
        assert cli.load_command(name).get_short_help_str(limit=200) == short_help, name


@torch_only
def test_training_and_evaluation_on_torch_never_import_tensorflow(tmp_path):
    args = ["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke", "--eval-attacks", "clean,pgd20"]
    imported, out = _imported(args + ["--out", str(tmp_path / "run"), "--verbose", "0"], backend="torch")
    assert (tmp_path / "run" / "results.json").exists(), out.stdout + out.stderr
    assert imported == ["keras", "torch"], out.stderr
