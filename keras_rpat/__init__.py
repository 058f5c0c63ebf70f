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

from keras_rpat import attacks  # noqa: E402
from keras_rpat import autoattack  # noqa: E402
from keras_rpat import callbacks  # noqa: E402
from keras_rpat import datasets  # noqa: E402
from keras_rpat import evaluation  # noqa: E402
from keras_rpat import layers  # noqa: E402
from keras_rpat import losses  # noqa: E402
from keras_rpat import models  # noqa: E402
from keras_rpat import optimizers  # noqa: E402
from keras_rpat import presets  # noqa: E402
from keras_rpat.attacks import FGSM  # noqa: E402
from keras_rpat.attacks import PGD  # noqa: E402
from keras_rpat.attacks import RandomNoise  # noqa: E402
from keras_rpat.losses import MART  # noqa: E402
from keras_rpat.losses import TRADES  # noqa: E402
from keras_rpat.losses import AdversarialCrossEntropy  # noqa: E402
from keras_rpat.losses import BoAT  # noqa: E402
from keras_rpat.losses import Consistency  # noqa: E402
from keras_rpat.losses import CrossEntropy  # noqa: E402
from keras_rpat.losses import RobustPerception  # noqa: E402
from keras_rpat.losses import RPATPlusPlus  # noqa: E402
from keras_rpat.trainer import RPATTrainer  # noqa: E402
from keras_rpat.trainer import WeightAveraging  # noqa: E402
from keras_rpat.callbacks import RobustEvaluation  # noqa: E402
from keras_rpat.evaluation import EvalResult  # noqa: E402
from keras_rpat.evaluation import mean_nrr  # noqa: E402

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
