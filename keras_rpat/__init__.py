"""keras_rpat: Robust Perception Adversarial Training for Keras 3.

Importing `keras_rpat` selects the PyTorch backend when `KERAS_BACKEND` is unset
and Keras is not imported yet (Keras' own default is TensorFlow); it changes
nothing else. The backend is fixed the first time Keras is imported, so set
`KERAS_BACKEND` before importing Keras or keras_rpat to choose it.

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
import os as _os
import sys as _sys

# The product's default backend, chosen before Keras is imported (afterwards
# Keras' choice stands). An explicit KERAS_BACKEND always wins.
if "keras" not in _sys.modules:
    _os.environ.setdefault("KERAS_BACKEND", "torch")

from keras_rpat._version import __version__  # noqa: E402

# The public API loads on first use (PEP 562), so that `import keras_rpat`
# imports neither Keras nor a framework, and the `keras-rpat` command answers
# `--help` or a usage error without them. The first name used loads Keras and
# every module of `_REGISTERED` (so `keras.saving.load_model` then finds all of
# keras_rpat's classes); an unsupported backend is then an `ImportError`
# (`_checks.check_keras_backend`, loaded then: it imports NumPy).
# `config` holds plain switches: it loads alone (the command line sets them before any Keras).
_REGISTERED = ("attacks", "autoattack", "layers", "losses", "optimizers", "trainer")
_KERAS_FREE = ("config",)
_MODULES = ("attacks", "autoattack", "callbacks", "datasets", "evaluation", "layers", "losses", "models")
_MODULES += ("config", "optimizers", "presets")
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
    if (name in _MODULES or name in _NAMES) and name not in _KERAS_FREE:
        _importlib.import_module("keras_rpat._checks").check_keras_backend()
        for module in _REGISTERED:
            _importlib.import_module(f"keras_rpat.{module}")
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
    "config",
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
