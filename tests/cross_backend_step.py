"""One training step per method on the active backend, for the cross-backend test.

Usage: KERAS_BACKEND=... python tests/cross_backend_step.py OUT.npz

Weights and data come from NumPy with fixed seeds, every attack starts at `x`
(random_start=False), and everything runs in float64 (`testing.float64_precision`:
the PGD sign steps of two float32 backends differ wherever a gradient component is
at rounding level), so the torch, tensorflow and jax runs must agree to float64
rounding. Written per method: the loss (`loss`), the gradient of every trainable
weight (`g0`, `g1`, ...), the classifier's weights after the step (`w0`, ... with
the BatchNorm statistics) and the EMA teacher's (`t0`, ...).
"""

import sys

import keras_rpat  # noqa: F401  (sets the default backend)

import keras
import numpy as np

from keras_rpat import attacks, models, optimizers, presets
from testing import float64_precision

LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
METHODS = ("pgd_at+rpat", "trades+rpat", "mart+rpat", "consistency_at+rpat", "rebat", "rpat_plus_plus")


def make_classifier():
    model = models.get("small_cnn", num_classes=5, input_shape=(8, 8, 3), widths=(4, 6, 8))
    rng = np.random.default_rng(123)
    weights = []
    for w in model.get_weights():
        if w.ndim == 1 and np.all(w == 1.0):  # BN gamma / moving variance
            weights.append(1.0 + 0.1 * rng.standard_normal(w.shape))
        else:
            weights.append(0.3 * rng.standard_normal(w.shape))
    model.set_weights(weights)
    return model


def make_batch():
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(12, 8, 8, 3))
    y = rng.integers(0, 5, size=(12,)).astype("int64")
    return x, y


def run(method):
    preset = presets.get(method, norm="linf")
    if method.startswith("trades"):
        # Started exactly at x, the TRADES KL attack has a zero gradient, and
        # the sign of round-off decides the step on each backend: attack with
        # CE here (the KL attack is checked in tests/test_attacks.py).
        preset = preset.with_options(attack=attacks.MARTAttack("linf", 8 / 255, 2 / 255))
    preset.attack.random_start = False
    preset.attack.num_steps = 3
    if preset.weight_averaging is not None:
        preset.weight_averaging.start_epoch = 0
        for loss in preset.losses:
            loss.start_epoch = 0
    classifier = make_classifier()
    trainer = preset.build_trainer(classifier)
    optimizer = optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    trainer.compile(optimizer=optimizer)
    x, y = make_batch()
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in trainer.trainable_variables]
    logs = trainer.train_on_batch(x, y, return_dict=True)
    out = {"loss": np.float64(logs["loss"])}
    # The first step's momentum buffer is `gradient + weight_decay * weight` (optimizers.SGD; torch's clone).
    assert len(optimizer.momentums) == len(before)
    for i, (buffer, w) in enumerate(zip(optimizer.momentums, before)):
        buffer = keras.ops.convert_to_numpy(buffer)
        assert buffer.shape == w.shape, (buffer.shape, w.shape)
        out[f"g{i}"] = buffer - WEIGHT_DECAY * w
    for i, w in enumerate(classifier.get_weights()):
        out[f"w{i}"] = w
    if trainer.teacher is not None:
        for i, w in enumerate(trainer.teacher.get_weights()):
            out[f"t{i}"] = w
    return out


def main(path):
    result = {}
    with float64_precision():
        for method in METHODS:
            for key, value in run(method).items():
                result[f"{method}/{key}"] = value
    np.savez(path, backend=keras.config.backend(), **result)


if __name__ == "__main__":
    main(sys.argv[1])
