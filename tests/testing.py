"""Helpers shared by the test files: NumPy references of the formulas, conversions, Click runs.

Import as `from testing import BACKEND, np_ce, to_np` (pytest puts `tests/`
on the path through its rootdir-relative imports).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner

BACKEND = keras.config.backend()

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="runs on the torch backend only")


def to_np(x):
    """A backend tensor (or array) as float64 NumPy."""
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def np_log_softmax(z):
    """Row-wise log-softmax in float64 (inf logits give NaN, as in the library)."""
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_targets(y, num_classes):
    """Integer labels `(B,)` or `(B, 1)` -> one-hot `(B, C)`; soft labels `(B, C)` unchanged."""
    y = np.asarray(y, np.float64)
    if y.ndim == 2 and y.shape[-1] == num_classes and num_classes != 1:
        return y
    return np.eye(num_classes)[y.astype(int).reshape(-1)]


def np_ce(y, z):
    """Per-sample cross-entropy for integer or soft labels."""
    return -np.sum(np_targets(y, np.shape(z)[-1]) * np_log_softmax(z), axis=-1)


def invoke(command, args, **kwargs):
    """Runs a Click command with `CliRunner`; every argument is passed as a string."""
    return CliRunner().invoke(command, [str(a) for a in args], **kwargs)


# Runs the command line in a fresh process, as the `keras-rpat` script does (its
# argv[0]; see keras_rpat._started_as_cli), and prints the heavy modules it imported.
PROBE = (
    "import sys, json\n"
    "sys.argv[0] = 'keras-rpat'\n"
    "from keras_rpat.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], prog_name='keras-rpat', standalone_mode=False)\n"
    "finally:\n"
    "    print('IMPORTED', json.dumps(sorted(m for m in ('keras', 'torch', 'tensorflow') if m in sys.modules)))\n"
)


def imported(args, backend=None):
    """`(heavy modules imported, completed process)` of `keras-rpat ARGS` in a fresh process."""
    env = dict(os.environ, KERAS_BACKEND=backend or os.environ.get("KERAS_BACKEND", "torch"))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *[str(a) for a in args]], capture_output=True, text=True, env=env
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("IMPORTED ")]
    assert line, out.stdout + out.stderr
    return json.loads(line[-1][len("IMPORTED ") :]), out
