"""Keeps Keras from importing TensorFlow on the torch backend.

Imported by `keras_rpat.backend` with the package when the backend is torch,
before anything calls `keras.utils.set_random_seed` or saves a model.
"""

import sys

from keras.src.utils import module_utils


class TensorFlowIfImported(module_utils.LazyModule):
    """Keras' lazy `tensorflow` module, "available" only once something imported TensorFlow.

    Keras asks `tensorflow.available` in `keras.utils.set_random_seed` and when
    it serializes a model (`model.save`), which imports TensorFlow whenever it
    is installed: seconds and TensorFlow's start-up lines on the torch backend.
    An object can only be a TensorFlow one if TensorFlow was imported, so the
    answer is unchanged for every object Keras checks; `tf.data` input still
    works (the user imported TensorFlow to build it).
    """

    @property
    def available(self):
        return "tensorflow" in sys.modules and super().available


# Keras' modules hold this one instance (`from ... import tensorflow as tf`), so its class is swapped.
module_utils.tensorflow.__class__ = TensorFlowIfImported
