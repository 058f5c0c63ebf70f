"""Tests of `keras_rpat.callbacks.RobustEvaluation` (docs/algorithms.md#evaluation-protocol, #best-checkpoint)."""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import json
import os

import keras
import numpy as np
import pytest

from keras_rpat import _io, attacks, callbacks, evaluation, optimizers
from keras_rpat.trainer import RPATTrainer, WeightAveraging


def tiny_classifier(num_classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D(name="penultimate")(h)
    out = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, out)


def data(n=16, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 6, 6, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=(n,)).astype("int64")
    return x, y


class Scripted:
    """Replaces the robust evaluation by a scripted sequence of accuracies."""

    def __init__(self, monkeypatch, robust_percent):
        self.values = list(robust_percent)
        self.saved = []
        monkeypatch.setattr(evaluation, "attack_correct", self._attack_correct)
        real_save = _io.atomic_save_model

        def save(model, path):
            self.saved.append(os.path.basename(path))
            real_save(model, path)

        monkeypatch.setattr(_io, "atomic_save_model", save)

    def _attack_correct(self, model, attack, x, y, batch_size):
        percent = self.values.pop(0)
        correct = np.zeros(len(x), dtype=bool)
        correct[: int(round(percent / 100 * len(x)))] = True
        return correct


def run_epochs(cb, model, epochs, start=0, total=None):
    cb.set_model(model)
    cb.set_params({"epochs": total or epochs, "verbose": 0})
    cb.on_train_begin()
    logs_seen = []
    for epoch in range(start, epochs):
        cb.on_epoch_begin(epoch)
        logs = {}
        cb.on_epoch_end(epoch, logs)
        logs_seen.append(logs)
    cb.on_train_end()
    return logs_seen


def test_best_only_on_strict_improvement(tmp_path, monkeypatch):
    script = Scripted(monkeypatch, [25.0, 50.0, 50.0, 37.5, 75.0])
    x, y = data(8)
    cb = callbacks.RobustEvaluation(
        x, y, checkpoint_dir=tmp_path / "ckpt", history_path=tmp_path / "history.json", verbose=0
    )
    logs = run_epochs(cb, tiny_classifier(), 5)
    # best.keras after epochs 1, 2 and 5 (epoch 3 only ties); final.keras every epoch.
    b, f = "best.keras", "final.keras"
    assert script.saved == [b, f, b, f, f, f, b, f]
    assert (cb.best, cb.best_epoch) == (75.0, 5)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert [r["robust"] for r in history] == [25.0, 50.0, 50.0, 37.5, 75.0]
    assert set(history[0]) == {"epoch", "clean", "robust", "lr", "time", "eval_time"}
    assert logs[1]["val_robust_acc"] == pytest.approx(0.5)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.keras", "final.keras"]  # no temp files


def test_strict_improvement_keeps_first_best(tmp_path, monkeypatch):
    script = Scripted(monkeypatch, [50.0, 50.0, 25.0])
    x, y = data(8)
    cb = callbacks.RobustEvaluation(x, y, checkpoint_dir=tmp_path, verbose=0)
    run_epochs(cb, tiny_classifier(), 3)
    assert (cb.best, cb.best_epoch) == (50.0, 1)
    assert script.saved == ["best.keras", "final.keras", "final.keras", "final.keras"]


def test_every_and_last_epoch(monkeypatch):
    Scripted(monkeypatch, [10.0, 20.0, 30.0])
    x, y = data(8)
    cb = callbacks.RobustEvaluation(x, y, every=2, verbose=0)
    logs = run_epochs(cb, tiny_classifier(), 5)
    assert [r["epoch"] for r in cb.history] == [2, 4, 5]  # the last epoch is always evaluated
    assert "val_robust_acc" not in logs[0] and "val_robust_acc" in logs[1]


def test_resume_loads_and_truncates_history(tmp_path, monkeypatch):
    Scripted(monkeypatch, [37.5, 87.5, 62.5, 25.0, 50.0])
    x, y = data(8)
    path = tmp_path / "history.json"
    first = callbacks.RobustEvaluation(x, y, history_path=path, verbose=0)
    run_epochs(first, tiny_classifier(), 4)
    assert (first.best, first.best_epoch) == (87.5, 2)
    # A crash after epoch 4, resumed from the epoch-2 checkpoint: initial_epoch=2.
    resumed = callbacks.RobustEvaluation(x, y, history_path=path, verbose=0)
    run_epochs(resumed, tiny_classifier(), 3, start=2)
    history = json.loads(path.read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["robust"] for r in history] == [37.5, 87.5, 50.0]
    assert (resumed.best, resumed.best_epoch) == (87.5, 2)


def test_default_attack_follows_training_attack():
    x, y = data(8)
    cb = callbacks.RobustEvaluation(x, y, verbose=0)
    trainer = RPATTrainer(
        tiny_classifier(),
        attack=attacks.PGD("l2", 128 / 255, 32 / 255, num_steps=7, schedule={1: {"epsilon": 0.9}}),
    )
    cb.set_model(trainer)
    attack = cb.evaluation_attack()
    assert (attack.norm, attack.epsilon, attack.step_size) == ("l2", 128 / 255, 32 / 255)
    assert (attack.num_steps, attack.random_start, attack.training, attack.style) == (10, True, False, "advertorch")
    cb.set_model(RPATTrainer(tiny_classifier(), attack=None))
    attack = cb.evaluation_attack()
    assert (attack.norm, attack.epsilon, attack.step_size) == ("linf", 8 / 255, 2 / 255)
    cb20 = callbacks.RobustEvaluation(x, y, num_steps=20, seed=5)
    cb20.set_model(trainer)
    assert (cb20.evaluation_attack().num_steps, cb20.evaluation_attack().seed) == (20, 5)
    assert cb.evaluation_attack().seed == 0


def test_argument_errors():
    x, y = data(4)
    with pytest.raises(ValueError, match="`every`"):
        callbacks.RobustEvaluation(x, y, every=0)
    with pytest.raises(ValueError, match="`attack`"):
        callbacks.RobustEvaluation(x, y, attack="pgd")
    with pytest.raises(ValueError, match="`num_steps`"):
        callbacks.RobustEvaluation(x, y, num_steps=0)


def test_fit_with_weight_averaging_evaluates_teacher(tmp_path):
    x_train, y_train = data(16, seed=1)
    x_test, y_test = data(12, seed=2)
    classifier = tiny_classifier()
    trainer = RPATTrainer(
        classifier,
        attack=attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=1),
        weight_averaging=WeightAveraging(decay=0.5, start_epoch=0),
    )
    trainer.compile(optimizer=optimizers.SGD(0.1, momentum=0.9))
    cb = callbacks.RobustEvaluation(
        x_test, y_test, num_steps=2, checkpoint_dir=tmp_path, history_path=tmp_path / "h.json", verbose=0
    )
    fit = trainer.fit(x_train, y_train, batch_size=8, epochs=2, callbacks=[cb], verbose=0)
    assert cb.evaluation_model() is trainer.teacher
    assert len(fit.history["val_robust_acc"]) == 2 and len(fit.history["val_clean_acc"]) == 2
    history = json.loads((tmp_path / "h.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["lr"] == pytest.approx(0.1)
    assert cb.best == max(r["robust"] for r in history)
    assert fit.history["val_robust_acc"][-1] == pytest.approx(history[-1]["robust"] / 100)
    # final.keras is the WA teacher (it differs from the online classifier).
    final = keras.saving.load_model(tmp_path / "final.keras", compile=False)
    teacher_w, online_w = trainer.teacher.get_weights(), classifier.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(teacher_w, online_w))
    for a, b in zip(final.get_weights(), teacher_w):
        np.testing.assert_allclose(a, b)
    assert os.path.exists(tmp_path / "best.keras")
    # The recorded accuracies are the teacher's.
    assert history[-1]["clean"] == pytest.approx(evaluation.clean_accuracy(trainer.teacher, x_test, y_test))

    # Resuming with initial_epoch: the history of later epochs is replaced.
    resumed = callbacks.RobustEvaluation(
        x_test, y_test, num_steps=2, checkpoint_dir=tmp_path, history_path=tmp_path / "h.json", verbose=0
    )
    trainer.fit(x_train, y_train, batch_size=8, epochs=3, initial_epoch=1, callbacks=[resumed], verbose=0)
    history = json.loads((tmp_path / "h.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert resumed.best == max(r["robust"] for r in history)


@pytest.mark.parametrize("verbose", [1, 0])
def test_attack_n_batch_size_and_verbose_reach_the_evaluation(monkeypatch, capsys, verbose):
    x, y = data(10)
    attack = attacks.PGD(num_steps=1, seed=3)
    seen = []
    for name in ("clean_correct", "attack_correct"):
        real = getattr(evaluation, name)

        def spy(model, *args, _real=real, **kwargs):
            seen.append((args[0] if len(args) > 3 else None, len(args[-3]), args[-1]))  # attack, rows, batch size
            return _real(model, *args, **kwargs)

        monkeypatch.setattr(evaluation, name, spy)
    cb = callbacks.RobustEvaluation(x, y, attack=attack, n=4, batch_size=3, verbose=verbose)
    np.testing.assert_array_equal(cb.x_test, x[[0, 2, 5, 7]])  # n evenly strided examples
    run_epochs(cb, RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=2)), 1)
    assert seen == [(None, 4, 3), (attack, 4, 3)]
    printed = capsys.readouterr().out
    assert ("Epoch 1: clean" in printed) == bool(verbose)


@pytest.mark.parametrize("save_freq, delete_checkpoint", [(1, False), ("epoch", True)])
def test_run_backup_save_freq_and_delete_checkpoint(tmp_path, save_freq, delete_checkpoint):
    folder = tmp_path / "backup"
    metadata = folder / "training_metadata.json"
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(json.loads(metadata.read_text())["batch"] if metadata.exists() else None)

    trainer = RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=1))
    trainer.compile(optimizer=optimizers.SGD(0.1))
    backup = callbacks.RunBackup(str(folder), save_freq=save_freq, delete_checkpoint=delete_checkpoint)
    trainer.fit(*data(24), batch_size=8, epochs=1, verbose=0, callbacks=[backup, Probe()])
    # save_freq=1: a backup after each batch (the last one's is the epoch's); "epoch": none inside it.
    assert seen[:2] == ([1, 2] if save_freq == 1 else [None, None])
    assert folder.exists() != delete_checkpoint


def test_run_backup_keeps_the_random_state_of_the_trainer_and_of_its_attack(tmp_path):
    trainer = RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=1))
    trainer.compile(optimizer=optimizers.SGD(0.1))
    backup = callbacks.RunBackup(str(tmp_path), delete_checkpoint=False)
    trainer.fit(*data(8), batch_size=8, epochs=1, verbose=0, callbacks=[backup])
    state = json.loads((tmp_path / "training_metadata.json").read_text())["random_state"]["variables"]
    assert sorted(state) == ["attack", "trainer"]
    for name, generator in (("trainer", trainer.seed_generator), ("attack", trainer.attack.seed_generator)):
        assert state[name] == keras.ops.convert_to_numpy(generator.state).tolist()
