"""Runs that survive: divergence stops a run cleanly; a killed run resumes to the same result.

The kill tests run `keras-rpat train` and `keras-rpat recipe` in a subprocess
on tiny data (`--smoke`, 8 steps an epoch, 2 epochs, `--checkpoint-every`)
and SIGKILL them right after the run writes a file that says where it is
(`tests/kill_hook`), on both backends: the recipe at a backup after a random
step of its second epoch; `train` after the PGD evaluation's first batch and
after AutoAttack's first batch (under tensorflow in AutoAttack's PyTorch
subprocess, killed with the run). The rerun (in this process: one Keras start-up less) resumes and
must end with the same weights (bitwise, on CPU), the same per-image
evaluation results and the same result files as an uninterrupted run, made
once per backend and module. Each kill also leaves a stale lock that the
next run takes over.
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_rpat
from keras_rpat import evaluation
from keras_rpat import _resume
from keras_rpat import backend as rpat_backend
from keras_rpat import recipes
from keras_rpat.callbacks import DivergenceError
from keras_rpat.recipes import runner


class PoisonWeights(keras.callbacks.Callback):
    """Sets the classifier's first weight to NaN before `step` (1-based) of `epoch`: a diverged update."""

    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step, self.current = epoch, step, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if (self.current, batch + 1) == (self.epoch, self.step):
            w = self.model.classifier.trainable_weights[0]
            w.assign(keras.ops.full(w.shape, float("nan"), dtype=w.dtype))


class StopAt(keras.callbacks.Callback):
    """Raises `KeyboardInterrupt` after `step` (1-based) of `epoch` (1-based): an interruption mid-epoch."""

    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step, self.current = epoch, step, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch + 1) == (self.epoch, self.step):
            raise KeyboardInterrupt("simulated interruption")


def _specs(n_methods=1):
    recipe = recipes.load_recipe("figure2")
    specs = recipe.runs(dataset="cifar10", smoke=True, epochs=2)[:n_methods]
    return recipe, [dataclasses.replace(s, eval_attacks=("clean",)) for s in specs]


def test_divergence_stops_at_once_keeps_the_last_good_state_and_the_recipe_moves_on(tmp_path, monkeypatch):
    recipe, specs = _specs(n_methods=2)
    real = runner.run_experiment

    def first_diverges(spec, *args, **kwargs):
        poison = [PoisonWeights(epoch=2, step=1)] if spec is specs[0] else []
        return real(spec, *args, callbacks=poison, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", first_diverges)
    lines = []
    out = recipes.run_recipe(recipe, specs, tmp_path, verbose=0, echo=lines.append)
    first, second = out["results"]
    assert first["status"] == "failed" and first["complete"] is False
    assert first["diverged_at"] == {"epoch": 2, "step": 1, "loss": "nan"}
    assert "loss is nan at epoch 2, step 1" in first["failed"] and "learning rate" in first["failed"]
    assert second["complete"] is True and out["failed"] == [first["failed"]]
    assert any(line.startswith("FAILED") for line in lines) and "1 of 2 run(s) failed" in lines[-1]
    report = (tmp_path / f"{recipe.name}.md").read_text()
    assert "## Failed runs" in report and f"`{specs[0].run_dir}`: Training diverged" in report
    # The diverged run keeps its last good state: epoch 1's backup and best checkpoint, all finite.
    run_dir = tmp_path / specs[0].run_dir
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    assert json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())] == [1]
    best = keras.saving.load_model(run_dir / "best.keras", compile=False)
    assert all(np.isfinite(w).all() for w in best.get_weights())
    assert not (run_dir / "trained.json").exists()


def _tiny_model_and_data(n=24, size=8):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=n)
    keras.utils.set_random_seed(0)
    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(size, size, 3), widths=(4, 8, 8))
    return model, x, y


def test_a_bare_fit_stops_at_the_first_non_finite_loss_unless_told_not_to():
    model, x, y = _tiny_model_and_data()
    trainer = keras_rpat.RPATTrainer(model)
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1))
    # verbose=0 and no other batch-end callback: Keras runs the guard off the main thread, and its error still stops fit.
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 2, step 2\. .*reload the last checkpoint") as e:
        trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[PoisonWeights(epoch=2, step=2)])
    assert (e.value.epoch, e.value.step) == (2, 2) and trainer.stop_training
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, stop_on_divergence=False)  # Keras' behaviour
    assert np.isnan(history.history["loss"][-1])
    with pytest.raises(ValueError, match="stop_on_divergence"):
        trainer.fit(x, y, stop_on_divergence="yes")


def test_a_nan_weight_reaches_the_loss_through_relu_and_global_pooling():
    # On jax, XLA's CPU compiler hands a ReLU before a sum (small_cnn's last ReLU and its global average pooling,
    # at this size) to YNNPACK, whose maximum drops NaN: the loss stayed finite and training went on with NaN
    # weights, unless XLA_FLAGS keeps the reductions in XLA's own code (keras_rpat.backend.jax sets it).
    model, x, y = _tiny_model_and_data(n=32, size=16)
    trainer = keras_rpat.RPATTrainer(model, attack=None, losses=[keras_rpat.losses.CrossEntropy()])
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1))
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 2, step 1\."):
        trainer.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[PoisonWeights(epoch=2, step=1)])


def test_divergence_guard_hint_and_kept_are_in_the_error():
    model, x, y = _tiny_model_and_data(n=8)
    trainer = keras_rpat.RPATTrainer(model)
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1))
    guard = keras_rpat.callbacks.DivergenceGuard(hint="lr 9", kept="Nothing was saved.")
    with pytest.raises(DivergenceError, match=r"too large \(lr 9\); lower them and rerun\. Nothing was saved\.$"):
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[guard, PoisonWeights(epoch=1, step=1)])


def test_a_pgd_evaluation_stopped_after_a_batch_resumes_with_the_same_random_starts(tmp_path, monkeypatch):
    model, x, y = _tiny_model_and_data()

    def pgd(seed=5):
        return evaluation.evaluation_pgd("linf", 8 / 255, 2 / 255, 2, seed)

    whole = evaluation.attack_correct(model, pgd(), x, y, 8, state_path=tmp_path / "whole.json")
    path = tmp_path / "stopped.json"
    save = _resume.StateFile.save

    def save_then_stop(self, *args):
        save(self, *args)
        raise KeyboardInterrupt("after the first batch")

    monkeypatch.setattr(_resume.StateFile, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluation.attack_correct(model, pgd(), x, y, 8, state_path=path)
    monkeypatch.undo()
    assert _read(path)["done"] == 8
    attack = pgd()
    perturbed = []  # the rows of each batch attacked (on jax `perturb` runs compiled, its Python once per shape)
    map_rows = rpat_backend.map_rows
    monkeypatch.setattr(
        rpat_backend,
        "map_rows",
        lambda fn, arrays, *args: perturbed.append(len(arrays[0])) or map_rows(fn, arrays, *args),
    )
    resumed = evaluation.attack_correct(model, attack, x, y, 8, state_path=path)
    assert perturbed == [8, 8] and np.array_equal(resumed, whole)
    # The same per-image results and the same random state after the last batch as the evaluation that ran through.
    assert _read(path) == _read(tmp_path / "whole.json")
    with pytest.raises(ValueError, match=r"stopped\.json belongs to another evaluation \(attack: .*Delete it"):
        evaluation.attack_correct(model, pgd(seed=6), x, y, 8, state_path=path)
    path.write_text("{truncated")
    with pytest.raises(ValueError, match=r"Could not read the PGD evaluation state file .*stopped\.json.*Delete it"):
        evaluation.pgd_accuracy(model, x, y, num_steps=2, batch_size=8, seed=5, state_path=path)


# State files as the code before `keras_rpat._resume` wrote them (`pgd_state.py` and `autoattack/state.py`,
# on tensorflow), for `_fixed_model_and_data()`. In the AutoAttack file the key's "version" (the AutoAttack
# version) overwrites the format's version number, as it always did.
OLD_PGD_STATE = {
    "format": "keras_rpat.pgd_state",
    "version": 1,
    "attack": {
        "norm": "linf",
        "epsilon": 0.03137254901960784,
        "step_size": 0.00784313725490196,
        "num_steps": 2,
        "random_start": True,
        "style": "advertorch",
        "loss": "ce",
        "training": False,
        "schedule": None,
        "seed": 5,
    },
    "batch_size": 8,
    "n": 16,
    "data_sha256": "ce3f0e35fc2cd7bd5ec727cac9b3e586761b7db729e2e5a0332844254bdb638f",
    "model_sha256": "1b188a740c527a0d6286fc0e24230c2f62fefb355bee9f6945df6e3f025a34ad",
    "done": 8,
    "correct": [False, True, True, True, False, False, False, False],
    "random_state": {"variable": [5, 1]},
}
OLD_AUTOATTACK_STATE = {
    "format": "keras_rpat.autoattack_state",
    "version": "custom",
    "norm": "linf",
    "epsilon": 0.03137254901960784,
    "attacks": ["apgd-ce"],
    "seed": 0,
    "n": 16,
    "batch_size": 8,
    "options": {"apgd": {"n_iter": 2}},
    "data_sha256": "ce3f0e35fc2cd7bd5ec727cac9b3e586761b7db729e2e5a0332844254bdb638f",
    "model_sha256": "1b188a740c527a0d6286fc0e24230c2f62fefb355bee9f6945df6e3f025a34ad",
    "clean_accuracy": 0.5,
    "robust": [True, False] * 8,
    "done": [],
    "accuracy": {"clean": 0.5},
    "current": {"attack": "apgd-ce", "order": [0, 2, 4, 6, 8, 10, 12, 14], "next_batch": 0},
    "complete": False,
}


def _fixed_model_and_data():
    """The same weights, images and labels on every backend (the hashes in the files above)."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.set_weights([rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(3,)).astype("float32")])
    x = rng.uniform(size=(16, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 3, 16).astype("int64")
    return model, x, y


def test_state_files_written_before_the_merge_still_resume(tmp_path, monkeypatch):
    model, x, y = _fixed_model_and_data()
    path = tmp_path / "pgd_state.json"
    path.write_text(json.dumps(OLD_PGD_STATE))
    attack = evaluation.evaluation_pgd("linf", 8 / 255, 2 / 255, 2, 5)
    perturbed = []
    monkeypatch.setattr(
        attack, "perturb", lambda m, xb, yb: perturbed.append(len(xb)) or type(attack).perturb(attack, m, xb, yb)
    )
    resumed = evaluation.attack_correct(model, attack, x, y, 8, state_path=path)
    assert perturbed == [8] and resumed[:8].tolist() == OLD_PGD_STATE["correct"]
    saved = _read(path)
    assert list(saved) == list(OLD_PGD_STATE) and saved["done"] == 16 and saved["correct"] == resumed.tolist()
    assert {k: saved[k] for k in list(saved)[:7]} == {k: OLD_PGD_STATE[k] for k in list(saved)[:7]}  # the key
    if not TORCH:  # the file holds the variable, all of tensorflow's (and jax's) random state: the resumed run is the uninterrupted one
        whole = evaluation.attack_correct(model, evaluation.evaluation_pgd("linf", 8 / 255, 2 / 255, 2, 5), x, y, 8)
        assert np.array_equal(resumed, whole)

    config = keras_rpat.autoattack.AutoAttackConfig(
        norm="linf",
        epsilon=8 / 255,
        version="custom",
        attacks=("apgd-ce",),
        batch_size=8,
        seed=0,
        options={"apgd": {"n_iter": 2}},
    )
    aa_path = tmp_path / "aa_state.json"
    aa_path.write_text(json.dumps(OLD_AUTOATTACK_STATE))
    _resume.check_state_file(aa_path, _resume.AUTOATTACK)
    file = _resume.StateFile(aa_path, _resume.AUTOATTACK, _resume.autoattack_key(config, model, x, y))
    assert file.state == OLD_AUTOATTACK_STATE
    file.save()
    assert _read(aa_path) == OLD_AUTOATTACK_STATE
    fresh = _resume.StateFile(tmp_path / "new.json", _resume.AUTOATTACK, _resume.autoattack_key(config, model, x, y))
    assert list(fresh.state) == list(OLD_AUTOATTACK_STATE) and fresh.state["version"] == "custom"


@pytest.mark.skipif(keras.config.backend() == "tensorflow", reason="AutoAttack runs in this process on torch and jax")
def test_an_autoattack_run_resumes_a_state_file_written_before_the_merge(tmp_path):
    pytest.importorskip("pyautoattack")
    model, x, y = _fixed_model_and_data()
    path = tmp_path / "aa_state.json"
    path.write_text(json.dumps(OLD_AUTOATTACK_STATE))
    settings = dict(norm="linf", epsilon=8 / 255, version="custom", attacks_to_run=["apgd-ce"], batch_size=8, seed=0)
    settings.update(options={"apgd": {"n_iter": 2}}, state_path=path, return_adversarial=False)
    accuracy, _ = keras_rpat.autoattack.run_autoattack(model, x, y, **settings)
    saved = _read(path)
    # The file's clean pass (the even images) was taken, not recomputed (a fresh run keeps images 1 and 3).
    assert saved["complete"] and saved["done"] == ["apgd-ce"] and not any(saved["robust"][1::2])
    assert accuracy == 100 * sum(saved["robust"]) / 16 <= 50


# ---------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------

TORCH = keras.config.backend() == "torch"
# On torch and jax AutoAttack runs in the process that evaluates; on tensorflow in a PyTorch subprocess.
AUTOATTACK_SUBPROCESS = keras.config.backend() == "tensorflow"
# 64 smoke images in batches of 8: 8 steps an epoch. Seed 3: the smoke model gets 5 of the 16 evaluation images
# right on both backends, so AutoAttack (batches of 4 in smoke runs) has 2 batches; PGD has 2 (batches of 8).
KILL = dict(smoke=True, epochs=2, batch_size=8, seed=3)
KILL_ARGS = ["--smoke", "--epochs", "2", "--batch-size", "8", "--seed", "3"]
KILL_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_hook")


def _cli(*args):
    return [os.path.join(os.path.dirname(sys.executable), "keras-rpat"), *args]


def _kill_at(args, file, kill=None, **when):
    """Runs `args` and SIGKILLs it right after it writes `file` with the values `when` (`tests/kill_hook`).

    The run gets a session (process group) of its own, which the hook kills with everything it started; with
    `kill` (a pid file) the process that writes `file` (AutoAttack's PyTorch subprocess under tensorflow) kills
    only its parent, the run, and leaves its pid in that file. Fails if the run ends by itself.
    """
    target = {"file": file, "when": {k.replace("__", "."): v for k, v in when.items()}}
    if kill is not None:
        target.update(kill="parent", pid_file=str(kill))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (KILL_HOOK, os.environ.get("PYTHONPATH")) if p),
        KERAS_RPAT_KILL_AT=json.dumps(target),
        KERAS_RPAT_KILL_SPARE_PGRP=str(os.getpgrp()),
    )
    p = subprocess.run(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True, timeout=600
    )
    assert p.returncode == -signal.SIGKILL, (
        f"the run was not killed at {file} {when} (rc={p.returncode}): {p.stderr[-2000:]}"
    )


def _wait_until_gone(pid, timeout=60):
    """Waits for process `pid` to end (an orphan reaped by init, or a zombie, counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"AutoAttack's subprocess (pid {pid}) outlived its killed parent by {timeout} s")


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _comparable(obj):
    """`obj` without what differs between two equal runs: timings, provenance (elapsed, pid)."""
    if isinstance(obj, dict):
        return {
            k: _comparable(v)
            for k, v in obj.items()
            if k not in ("provenance", "skipped", "elapsed_s") and "time" not in k
        }
    if isinstance(obj, list):
        return [_comparable(v) for v in obj]
    return obj


def _assert_same_run(run_dir, reference_dir, names):
    for name in names:
        assert _comparable(_read(run_dir / name)) == _comparable(_read(reference_dir / name)), name
    for name in ("best.keras", "final.keras"):
        if (reference_dir / name).exists():
            w1 = keras.saving.load_model(run_dir / name, compile=False).get_weights()
            w2 = keras.saving.load_model(reference_dir / name, compile=False).get_weights()
            assert len(w1) == len(w2) and all(np.array_equal(a, b) for a, b in zip(w1, w2)), name


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory):
    """One uninterrupted `train` run per backend, shared by the kill cases."""
    spec = recipes.single_run(
        "pgd_at", "synthetic", eval_attacks=("clean", "pgd20", "autoattack"), checkpoints=("final",), **KILL
    )
    out = tmp_path_factory.mktemp("train_reference")
    recipes.run_single(spec, out, verbose=0)
    return spec, out


@pytest.mark.slow
def test_train_killed_mid_pgd_and_between_autoattack_batches_resumes_to_the_uninterrupted_result(
    train_reference, tmp_path
):
    spec, reference_dir = train_reference
    out = tmp_path / "killed"
    args = _cli(
        "train", "--method", "pgd_at", "--dataset", "synthetic", *KILL_ARGS, "--eval-attacks", "clean,pgd20,autoattack",
        "--checkpoints", "final", "--verbose", "0", "--out", str(out),
    )  # fmt: skip
    # Mid-PGD evaluation: training is done, the first of the two PGD batches is recorded.
    _kill_at(args, "pgd_state_final.json", done=8)
    assert (out / "trained.json").exists() and not (out / "eval_final.json").exists()
    assert len(_read(out / "pgd_state_final.json")["correct"]) == 8 and not (out / "aa_state_final.json").exists()
    # Between two AutoAttack batches: the PGD evaluation is complete, APGD-CE has done the first of its batches of 4.
    # Under tensorflow only the run is killed: its PyTorch subprocess, where AutoAttack runs, must not outlive it.
    pid_file = tmp_path / "autoattack.pid" if AUTOATTACK_SUBPROCESS else None
    _kill_at(args, "aa_state_final.json", kill=pid_file, current__next_batch=1)
    if pid_file is not None:
        _wait_until_gone(int(pid_file.read_text()), timeout=30)  # the hook holds it for 60 s unless it exits
    aa = _read(out / "aa_state_final.json")
    assert aa["current"]["attack"] == "apgd-ce" and aa["current"]["next_batch"] == 1, aa["current"]
    assert len(aa["current"]["order"]) > 4, "only one AutoAttack batch: the kill was not between two"
    assert _read(out / "pgd_state_final.json")["done"] == 16 and not (out / "eval_final.json").exists()
    with pytest.warns(UserWarning, match="stale lock"):
        resumed = recipes.run_single(spec, out, verbose=0)
    assert _comparable(resumed) == _comparable(_read(reference_dir / "results.json"))
    _assert_same_run(out, reference_dir, ("eval_final.json", "history.json", "train_log.json"))
    for name in ("pgd_state_final.json", "aa_state_final.json"):  # the same per-image results and random state
        assert _comparable(_read(out / name)) == _comparable(_read(reference_dir / name)), name
    assert not (out / ".keras_rpat.lock").exists()


@pytest.mark.slow
def test_recipe_killed_at_a_random_step_mid_epoch_resumes_to_the_uninterrupted_result(train_reference, tmp_path):
    # Figure 2's PGD-AT run trains what `train --method pgd_at` trains (same preset, seed and smoke settings): the
    # `train` reference is this run's reference too, one uninterrupted run less. Figure 2 has no AutoAttack.
    spec, reference_dir = train_reference
    recipe = recipes.load_recipe("figure2")
    specs = recipe.runs(method="pgd_at", seeds=[3], **{k: v for k, v in KILL.items() if k != "seed"})
    out = tmp_path / "killed"
    args = _cli(
        "recipe", "figure2", "--method", "pgd_at", "--seeds", "3", *KILL_ARGS[:-2], "--checkpoint-every", "1",
        "--verbose", "0", "--out", str(out),
    )  # fmt: skip
    run_dir = out / specs[0].run_dir
    assert specs[0].run_dir == "pgd_at/smoke-small_cnn-synthetic-linf-for-cifar10-resnet18_bottleneck/seed3"
    step = random.randint(1, 7)  # of the second epoch's 8
    _kill_at(args, "training_metadata.json", epoch=1, batch=step)
    meta = _read(run_dir / "backup" / "training_metadata.json")
    assert (meta["epoch"], meta["batch"], len(meta["metrics"])) == (1, step, 4), step
    assert not (run_dir / "trained.json").exists()
    with pytest.warns(UserWarning, match="stale lock"):
        recipes.run_recipe(recipe, specs, out, verbose=0, checkpoint_every=1)
    _assert_same_run(run_dir, reference_dir, ("history.json", "train_log.json", "pgd_state_final.json"))
    resumed, reference = _read(run_dir / "eval_final.json"), _read(reference_dir / "eval_final.json")
    assert [resumed[k] for k in ("clean", "pgd20", "n")] == [reference[k] for k in ("clean", "pgd20", "n")]
    assert _read(out / "figure2.json") is not None and not (run_dir / "backup").exists(), step


def test_a_damaged_mid_epoch_backup_names_the_file_and_the_fix(tmp_path):
    spec = dataclasses.replace(recipes.single_run("pgd_at", "synthetic", **KILL), eval_attacks=("clean",))
    run_dir = tmp_path / spec.run_dir
    with pytest.raises(KeyboardInterrupt):
        recipes.run_experiment(spec, tmp_path, verbose=0, checkpoint_every=1, callbacks=[StopAt(epoch=1, step=2)])
    meta = _read(run_dir / "backup" / "training_metadata.json")
    assert (meta["epoch"], meta["batch"], meta["weights"]) == (0, 2, "backup_0_2.weights.h5")
    assert sorted(p.name for p in (run_dir / "backup").iterdir()) == ["backup_0_2.weights.h5", "training_metadata.json"]
    (run_dir / "backup" / "backup_0_2.weights.h5").write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match=r"backup_0_2\.weights\.h5.*delete .*backup.*--overwrite"):
        recipes.run_experiment(spec, tmp_path, verbose=0, checkpoint_every=1)
