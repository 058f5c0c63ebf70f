"""Checks that need a GPU (marker `gpu`: skipped when the active backend sees none)."""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import keras
import numpy as np
import pytest

from keras_rpat import attacks, backend, losses, models, optimizers
from keras_rpat.trainer import RPATTrainer


@pytest.mark.gpu
def test_a_training_step_runs_on_the_gpu():
    assert any(key in backend.device_name().lower() for key in ("cuda", "gpu")), backend.device_name()
    keras.utils.set_random_seed(0)
    classifier = models.get("small_cnn", num_classes=10, input_shape=(16, 16, 3), widths=(4, 8, 8))
    trainer = RPATTrainer(
        classifier,
        attack=attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=2),
        losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception()],
    )
    trainer.compile(optimizer=optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
