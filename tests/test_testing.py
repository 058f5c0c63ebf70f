"""The suite's own helpers (`tests/testing.py`) do what they say."""

import os
import subprocess
import sys

import keras
import numpy as np
from testing import BACKEND
from testing import float64_precision
from testing import to_np


def _convnet():
    inputs = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 3, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)  # ops.mean
    return inputs, keras.Model(inputs, keras.layers.Dense(4)(h))  # ops.matmul


def _np_convnet(model, x):
    kernel, bias, dense, dense_bias = (to_np(w) for w in model.weights)
    patches = np.stack([x[:, i : i + 3, j : j + 3, :] for i in range(3) for j in range(3)], axis=1)  # (B, 9, 3, 3, 2)
    h = np.maximum(np.einsum("bpijc,ijco->bpo", patches, kernel) + bias, 0.0)
    return h.mean(axis=1) @ dense + dense_bias


def test_float64_precision_computes_a_keras_model_in_float64():
    x = np.random.default_rng(0).uniform(size=(4, 5, 5, 2))
    with float64_precision():
        keras.utils.set_random_seed(0)
        inputs, model = _convnet()
        logits = model(x)
        assert inputs.dtype == "float64" and all(w.dtype == "float64" for w in model.weights)
        assert keras.backend.standardize_dtype(logits.dtype) == "float64"
        assert keras.backend.result_type("float64", "float32") == "float64"
        z = keras.ops.convert_to_tensor(x)
        for op in (keras.ops.mean, keras.ops.var):
            assert keras.backend.standardize_dtype(op(z, axis=0).dtype) == "float64", op.__name__
            np.testing.assert_allclose(to_np(op(z, axis=0)), getattr(np, op.__name__)(x, axis=0), rtol=1e-14)
        if BACKEND == "torch":
            import torch

            assert torch.nn.Linear(2, 2).weight.dtype == torch.float64  # plain-PyTorch references too
        # float64 rounding: float32 anywhere in the chain (Dense, pooling) would give ~1e-7.
        expected = _np_convnet(model, x)
        assert np.abs(to_np(logits) - expected).max() < 1e-13 * np.abs(expected).max()


def test_float64_precision_restores_everything():
    before = keras.config.floatx(), keras.config.dtype_policy().name, keras.backend.result_type("float64", "float32")
    try:
        with float64_precision():
            raise RuntimeError("a failing test")
    except RuntimeError:
        pass
    after = keras.config.floatx(), keras.config.dtype_policy().name, keras.backend.result_type("float64", "float32")
    assert after == before
    assert before[:2] == ("float32", "float32")
    _, model = _convnet()
    assert all(w.dtype == "float32" for w in model.weights)
    if BACKEND == "torch":
        import torch

        assert torch.get_default_dtype() == torch.float32


def test_float64_precision_reaches_autoattacks_pytorch_subprocess():
    """AutoAttack's PyTorch subprocess (tensorflow backend) starts under float64_precision too: without it,
    a float64 model's Dense would compute in float32 there (Keras' type promotion on torch)."""
    from keras_rpat.autoattack import subprocess as aa_subprocess

    entry = aa_subprocess._ENTRY
    with float64_precision():
        prefix = aa_subprocess._ENTRY[: -len(entry)]
    assert aa_subprocess._ENTRY == entry and prefix
    probe = prefix + "import keras; print(keras.backend.result_type('float64', 'float64'), keras.config.floatx())"
    env = dict(os.environ, KERAS_BACKEND="torch")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["float64", "float64"], done.stdout
