"""The public API: exports, backend isolation, serialisation of every public class."""

import ast
import pathlib

import keras_rpat

import keras
import pytest

PACKAGE = pathlib.Path(keras_rpat.__file__).parent
# The backend, the torch fast path (its entry points stay torch-free), the torch side of AutoAttack and its JAX bridge (its
# facade stays torch-free), the data pipeline and the plain PyTorch modules that exported checkpoints load into.
FRAMEWORK_ALLOWED = {
    "backend",
    "fast_path",
    "autoattack/torch_bridge.py",
    "autoattack/cascade.py",
    "autoattack/jax_bridge.py",
    "datasets/cifar.py",
    "torch_models.py",
}


def test_every_exported_name_exists():
    for name in keras_rpat.__all__:
        assert getattr(keras_rpat, name) is not None, name


def test_default_backend_is_torch_unless_set(monkeypatch):
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", "import keras_rpat, keras; print(keras.config.backend())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "torch"


def _framework_imports(path):
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            if n.split(".")[0] in ("torch", "tensorflow", "jax"):
                found.append(n)
    return found


def test_frameworks_are_imported_only_in_backend_bridge_and_data():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in FRAMEWORK_ALLOWED or rel.as_posix() in FRAMEWORK_ALLOWED:
            continue
        found = _framework_imports(path)
        if found:
            offenders[str(rel)] = found
    assert not offenders, f"torch/tensorflow/jax imported outside keras_rpat/backend: {offenders}"


def test_unsupported_backend_error_names_the_supported_ones(monkeypatch):
    from keras_rpat import backend

    monkeypatch.setattr(keras.config, "backend", lambda: "numpy")
    with pytest.raises(RuntimeError, match="torch.*tensorflow.*jax.*'numpy'"):
        backend.get_backend()


def _instances():
    from keras_rpat import attacks, losses, trainer

    return [
        attacks.PGD("l2", 0.5, 0.1, 3, style="sotas", schedule={2: {"num_steps": 4}}),
        attacks.FGSM(4 / 255),
        attacks.RandomNoise(8 / 255),
        losses.CrossEntropy(),
        losses.AdversarialCrossEntropy(),
        losses.TRADES(beta=3.0, reuse_clean_forward=True),
        losses.MART(beta=5.0),
        losses.Consistency(weight=2.0, temperature=0.7),
        losses.RobustPerception(alpha=0.3, distance="js", alpha_sampling="beta+", proxy="penultimate", form="paper"),
        losses.BoAT(beta=2.0, start_epoch=3),
        losses.RPATPlusPlus(beta=0.5, alpha=0.4),
        trainer.WeightAveraging(decay=0.99, start_epoch=2, teacher_training=True),
        trainer.AWP(gamma=0.01, warmup_epochs=3),
    ]


@pytest.mark.parametrize("obj", _instances(), ids=lambda o: type(o).__name__)
def test_public_classes_round_trip_through_config(obj):
    config = keras.saving.serialize_keras_object(obj)
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is type(obj)
    assert again.get_config() == obj.get_config()
