"""keras_rpat: Robust Perception Adversarial Training for Keras 3.

Importing `keras_rpat` selects the PyTorch backend when `KERAS_BACKEND` is unset
(Keras' own default is TensorFlow). The backend is fixed the first time Keras is
imported, so set `KERAS_BACKEND` before importing Keras or keras_rpat.

Example:

```python
import keras_rpat

classifier = keras_rpat.models.get("resnet18_bottleneck", num_classes=10)
trainer = keras_rpat.RPATTrainer(
    classifier,
    attack=keras_rpat.attacks.PGD("linf", epsilon=8/255, step_size=2/255, num_steps=10),
    losses=[keras_rpat.losses.AdversarialCrossEntropy(),
            keras_rpat.losses.RobustPerception(alpha=0.5)],
)
trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
```
"""

import importlib as _importlib
import importlib.util as _importlib_util
import os as _os
import sys as _sys

_os.environ.setdefault("KERAS_BACKEND", "torch")


def _check_backend_choice():
    """A clear error for an unsupported `KERAS_BACKEND`, before Keras is imported (Keras fails obscurely).

    From the `keras-rpat` command it is one line on stderr and exit status 2
    (a traceback with `--debug`); from Python an `ImportError`.
    """
    backend = _os.environ["KERAS_BACKEND"]
    if backend in ("torch", "tensorflow"):
        return
    message = (
        f"keras_rpat supports the Keras backends torch and tensorflow. Received: KERAS_BACKEND={backend!r}. "
        "Set KERAS_BACKEND=torch (the default) or KERAS_BACKEND=tensorflow, or unset it."
    )
    command = _os.path.basename(_sys.argv[0] if _sys.argv else "")
    # "-m": `python -m keras_rpat` imports this package while locating its `__main__`.
    if (command.startswith("keras-rpat") or command == "-m") and "--debug" not in _sys.argv:
        _sys.stderr.write(f"Error: {message}\n")
        raise SystemExit(2)
    raise ImportError(message)


_check_backend_choice()

from keras_rpat._version import __version__  # noqa: E402

# In the `keras-rpat` command the public API loads on first use (PEP 562), so
# that `--help` or a usage error answers without Keras, torch or TensorFlow.
# Anywhere else it loads with the package (end of this file), as a Keras
# library's should: its serializable layers, losses and trainer are then
# registered, and `keras.saving.load_model` finds them after `import keras_rpat`.
_MODULES = ("attacks", "autoattack", "callbacks", "datasets", "evaluation", "layers", "losses", "models")
_MODULES += ("optimizers", "presets")
_NAMES = {
    "FGSM": "attacks",
    "PGD": "attacks",
    "RandomNoise": "attacks",
    "MART": "losses",
    "TRADES": "losses",
    "AdversarialCrossEntropy": "losses",
    "BoAT": "losses",
    "Consistency": "losses",
    "CrossEntropy": "losses",
    "RobustPerception": "losses",
    "RPATPlusPlus": "losses",
    "RPATTrainer": "trainer",
    "WeightAveraging": "trainer",
    "RobustEvaluation": "callbacks",
    "EvalResult": "evaluation",
    "mean_nrr": "evaluation",
}


def __getattr__(name):
    if name in _MODULES:
        value = _importlib.import_module(f"keras_rpat.{name}")
    elif name in _NAMES:
        value = getattr(_importlib.import_module(f"keras_rpat.{_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module 'keras_rpat' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    # modules
    "attacks",
    "autoattack",
    "callbacks",
    "datasets",
    "evaluation",
    "layers",
    "losses",
    "models",
    "optimizers",
    "presets",
    # trainer
    "RPATTrainer",
    "WeightAveraging",
    "RobustEvaluation",
    # evaluation
    "EvalResult",
    "mean_nrr",
    # attacks
    "PGD",
    "FGSM",
    "RandomNoise",
    # losses
    "CrossEntropy",
    "AdversarialCrossEntropy",
    "TRADES",
    "MART",
    "Consistency",
    "RobustPerception",
    "BoAT",
    "RPATPlusPlus",
]


def _started_as_cli():
    """Whether this process is the `keras-rpat` command (or `python -m keras_rpat[.cli]`)."""
    command = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    # "-m": `python -m keras_rpat.cli` imports this package while locating its module.
    return command.startswith("keras-rpat") or command == "-m"


# Without Keras installed, `keras_rpat.torch_models` (plain PyTorch) still imports.
if not _started_as_cli() and _importlib_util.find_spec("keras") is not None:
    for _name in _MODULES + ("trainer",):
        _importlib.import_module(f"keras_rpat.{_name}")
