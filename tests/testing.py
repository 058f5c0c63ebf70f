"""Helpers shared by the test files: NumPy references of the formulas, conversions, Click runs.

Import as `from testing import BACKEND, np_ce, to_np` (pytest puts `tests/`
on the path through its rootdir-relative imports).

The rule for a test that compares two implementations (the fast path vs the
Keras path, torch vs tensorflow, keras_rpat vs the plain-PyTorch reference,
lowered vs unlowered attacks, one device vs data-parallel):

- PGD's `sign()` turns a last-bit rounding difference into a whole-step flip,
  and deep conv -> train-mode BatchNorm gradients are mostly cancellation, so
  such a chain is chaotic in float32: a float32 tolerance is whatever one CPU
  happened to give (AVX2 and AVX-512 kernels round differently), too loose to
  catch a bug and still flaky elsewhere.
- So run the comparison in float64 (`with float64_precision():`) and hold it
  to float64 rounding (1e-9 to 1e-7 relative after a few steps); or compare
  only a quantity that is not chaotic in float32 (one step from the same start,
  before any sign step), at a float32 tolerance (1e-5).
- A tolerance above 1e-4 says on its line why it is needed.
"""

import contextlib
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


@contextlib.contextmanager
def float64_precision():
    """Everything Keras builds or computes inside is float64; restored on exit.

    Sets `floatx` and the global dtype policy to float64 (so `keras.Input`,
    the layers' variables and `keras.random` are float64), torch's default
    dtype (plain-PyTorch reference modules; on tensorflow when the test has
    imported torch), JAX's `jax_enable_x64` and, on the torch backend, a test-only patch of Keras' type promotion: Keras 3's `result_type` maps
    float64 to float32 on torch (`BIT64_TO_BIT32_DTYPE`, "aligned with JAX's
    default"), so `ops.matmul` (Dense), `ops.mean` and `ops.var` would compute
    float64 inputs in float32 (a float64 ResNet then matches torch float64 to
    1e-8, not 1e-16). The package itself uses public Keras only. AutoAttack's
    PyTorch subprocess (tensorflow backend) runs under it too.

    Build models and trainers inside the block. Use as `with float64_precision():`
    or as a decorator `@float64_precision()`.
    """
    from keras.src.backend.common import dtypes as keras_dtypes  # test-only: see the docstring

    from keras_rpat.autoattack import subprocess as aa_subprocess

    entry = aa_subprocess._ENTRY
    tests = os.path.dirname(os.path.abspath(__file__))
    # Entered for the subprocess' life (a context manager no name holds would exit when collected).
    float64_entry = f"import sys; sys.path.insert(0, {tests!r}); import testing; "
    float64_entry += "float64 = testing.float64_precision(); float64.__enter__(); "
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    promoted = keras_dtypes.BIT64_TO_BIT32_DTYPE["float64"]
    # torch: the backend's, or the plain-PyTorch references' imported by a tensorflow test.
    torch = sys.modules.get("torch")
    if BACKEND == "torch":
        import torch
    torch_dtype = None if torch is None else torch.get_default_dtype()
    # jax: float64 arrays exist only with `jax_enable_x64` (else silently float32).
    x64 = jax_x64(True) if BACKEND == "jax" else None
    try:
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        keras_dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
        if torch_dtype is not None:
            torch.set_default_dtype(torch.float64)
        aa_subprocess._ENTRY = float64_entry + entry
        yield
    finally:
        aa_subprocess._ENTRY = entry
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
        keras_dtypes.BIT64_TO_BIT32_DTYPE["float64"] = promoted
        if torch_dtype is not None:
            torch.set_default_dtype(torch_dtype)
        if x64 is not None:
            jax_x64(x64)


def jax_x64(enabled):
    """Sets JAX's `jax_enable_x64`; returns its previous value."""
    import jax

    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", enabled)
    return previous


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


# Runs the command line in a fresh process, as the `keras-rpat` script does, with
# the modules of BLOCKED made unimportable, and prints the heavy modules it imported.
PROBE = (
    "import sys, json\n"
    "sys.argv[0] = 'keras-rpat'\n"
    "sys.modules.update(dict.fromkeys(BLOCKED))\n"
    "from keras_rpat.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], prog_name='keras-rpat', standalone_mode=False)\n"
    "finally:\n"
    "    print('IMPORTED', json.dumps(sorted(m for m in ('keras', 'torch', 'tensorflow') if sys.modules.get(m))))\n"
)


def imported(args, backend=None, blocked=()):
    """`(heavy modules imported, completed process)` of `keras-rpat ARGS` in a fresh process.

    `blocked`: modules made unimportable, as if not installed (e.g. `("tensorflow",)`).
    """
    env = dict(os.environ, KERAS_BACKEND=backend or os.environ.get("KERAS_BACKEND", "torch"))
    probe = PROBE.replace("BLOCKED", repr(tuple(blocked)))
    out = subprocess.run(
        [sys.executable, "-c", probe, *[str(a) for a in args]], capture_output=True, text=True, env=env
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("IMPORTED ")]
    assert line, out.stdout + out.stderr
    return json.loads(line[-1][len("IMPORTED ") :]), out
