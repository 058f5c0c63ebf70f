"""keras_rpat: Robust Perception Adversarial Training for Keras 3.

Importing `keras_rpat` selects the PyTorch backend when `KERAS_BACKEND` is unset
(Keras' own default is TensorFlow). The backend is fixed the first time Keras is
imported, so set `KERAS_BACKEND` before importing Keras or keras_rpat.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "torch")

__version__ = "0.1.0"
