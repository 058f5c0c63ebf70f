"""AutoAttack under a backend other than torch: the cascade in a PyTorch subprocess (no torch here).

The model is saved to a temporary `.keras` file (Keras files are
backend-independent), the images and the `AutoAttackConfig` next to it, and
`keras_rpat.autoattack.cascade.subprocess_main` evaluates them with
`KERAS_BACKEND=torch`. AutoAttack's warnings and errors come back to the
caller as `AutoAttackWarning`s and exceptions of the same kind.
"""

import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import warnings

import keras
import numpy as np

from keras_rpat.autoattack.config import AutoAttackWarning

__all__ = ["exit_with_parent", "run"]

_ENTRY = (
    "import sys; from keras_rpat.autoattack.subprocess import exit_with_parent; exit_with_parent(); "
    "from keras_rpat.autoattack.cascade import subprocess_main; sys.exit(subprocess_main(sys.argv[1]))"
)
_ERRORS = {"ValueError": ValueError, "ImportError": ImportError}


def run(model, x, y, config):
    """Runs the cascade in a PyTorch subprocess; returns `(robust_accuracy_percent, x_adv)`.

    Args:
        model: a Keras model (any backend) that can be saved as `.keras`.
        x, y: checked images (the model's layout) and int64 labels.
        config: an `AutoAttackConfig`.
    """
    with tempfile.TemporaryDirectory(prefix="keras_rpat_autoattack_") as tmp:
        _write_inputs(tmp, model, x, y, config)
        returncode, tail = _launch(tmp, config.verbose)
        return _read_result(tmp, returncode, tail)


def exit_with_parent():
    """In the subprocess: exit at once when the parent dies, so a killed run leaves no orphan behind.

    The parent holds the write end of the subprocess' stdin until it has waited for it; end of file means it is
    gone (a SIGKILL, the OOM killer). An orphan would go on writing the AutoAttack state file that the rerun
    resumes from.
    """

    def watch():
        sys.stdin.buffer.read()
        os._exit(1)

    threading.Thread(target=watch, name="keras_rpat-exit-with-parent", daemon=True).start()


def _write_inputs(folder, model, x, y, config):
    try:
        model.save(os.path.join(folder, "model.keras"))
    except Exception as e:
        raise ValueError(
            f"AutoAttack under the {keras.config.backend()} backend evaluates the model "
            "in a PyTorch subprocess and needs to save it as a .keras file, which "
            f"failed: {type(e).__name__}: {e}. Make the model serialisable (register "
            "custom layers with keras.saving.register_keras_serializable) or run with "
            "KERAS_BACKEND=torch."
        ) from e
    np.savez(os.path.join(folder, "data.npz"), x=x, y=y)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f)


def _launch(folder, verbose):
    """Runs the subprocess; returns its exit code and the last lines of its output."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "torch"
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # stdout (AutoAttack's progress) is forwarded line by line when verbose,
    # through `sys.stdout` so notebooks and Click runners see it.
    tail = collections.deque(maxlen=25)
    with open(os.path.join(folder, "stderr.txt"), "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, folder],
            env=env,
            stdin=subprocess.PIPE,  # kept open while this process lives (see `exit_with_parent`)
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if verbose:
                sys.stdout.write(line)
                sys.stdout.flush()
        proc.wait()
        proc.stdin.close()
        err.seek(0)
        tail.extend(err.read().strip().splitlines()[-25:])
    return proc.returncode, tail


def _read_result(folder, returncode, tail):
    result_path = os.path.join(folder, "result.json")
    if not os.path.exists(result_path):
        lines = "\n".join(tail)
        raise RuntimeError(
            f"AutoAttack failed in its PyTorch subprocess (exit code {returncode}). Its output ends with:\n{lines}"
        )
    with open(result_path) as f:
        result = json.load(f)
    for message in result.get("warnings", []):
        warnings.warn(message, AutoAttackWarning, stacklevel=4)
    if result.get("error"):
        raise _ERRORS.get(result.get("error_type"), RuntimeError)(result["error"])
    adv_path = os.path.join(folder, "x_adv.npy")
    x_adv = np.load(adv_path) if result.get("has_adversarial") and os.path.exists(adv_path) else None
    return float(result["accuracy"]), x_adv
