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
import importlib.util as _importlib_util
import os as _os
import sys as _sys

# The product's default backend, chosen before Keras is imported (afterwards
# Keras' choice stands). An explicit KERAS_BACKEND always wins.
if "keras" not in _sys.modules:
    _os.environ.setdefault("KERAS_BACKEND", "torch")

from keras_rpat._version import __version__  # noqa: E402

# The public API loads on first use (PEP 562), so that `import keras_rpat`
# imports neither Keras nor a framework, and the `keras-rpat` command answers
# `--help` or a usage error without them. The first public name used (one of
# `__all__`) loads Keras and every module of `_REGISTERED` (so
# `keras.saving.load_model` then finds all of keras_rpat's classes); an unsupported
# backend is then an `ImportError` (`_checks.check_keras_backend`, loaded then: it
# imports NumPy). Any other submodule (`keras_rpat.trainer`) loads by itself.
_REGISTERED = ("attacks", "autoattack", "layers", "losses", "optimizers", "trainer")
# Modules that import no Keras load alone (the command line reads them before any framework).
_KERAS_FREE = ("cli", "config", "method_presets", "recipes")
_LOADING = []  # the public name whose first use is loading the API now
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
    "AWP": "trainer",
    "RobustEvaluation": "callbacks",
    "EvalResult": "evaluation",
    "mean_nrr": "evaluation",
}


def __getattr__(name):
    if name in _NAMES:
        module = _NAMES[name]
    elif not name.startswith("_") and _importlib_util.find_spec(f"keras_rpat.{name}") is not None:
        module = name  # a submodule, e.g. `keras_rpat.losses` or `keras_rpat.trainer`
    else:
        raise AttributeError(f"module 'keras_rpat' has no attribute {name!r}")
    if name in __all__ and module not in _KERAS_FREE and not _LOADING:
        _LOADING.append(name)
        try:
            _importlib.import_module("keras_rpat._checks").check_keras_backend()
            for registered in _REGISTERED:
                _importlib.import_module(f"keras_rpat.{registered}")
        finally:
            _LOADING.pop()
    value = _importlib.import_module(f"keras_rpat.{module}")
    if name in _NAMES:
        value = getattr(value, name)
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
    "AWP",
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
