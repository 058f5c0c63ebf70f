"""Runs that survive: divergence stops a run cleanly; a killed run resumes to the same result.

The kill test runs `keras-rpat train` in a subprocess on tiny data (`--smoke`)
and SIGKILLs it when a file the run writes appears: once mid-training (the
first epoch's backup is on disk, the second epoch is running) and once in the
evaluation phase (`trained.json` is written, the checkpoints are being
evaluated). The
re-run resumes and must end with the same weights (bitwise, on CPU) and the
same result files as an uninterrupted run. The first kill also leaves a stale
lock that the second process takes over.
"""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_rpat import recipes
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


# ---------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------


def _train_args(out):
    return [
        os.path.join(os.path.dirname(sys.executable), "keras-rpat"),
        "train",
        "--method",
        "pgd_at",
        "--dataset",
        "synthetic",
        "--smoke",
        "--epochs",
        "2",
        "--eval-attacks",
        "clean,pgd20",
        "--verbose",
        "0",
        "--out",
        str(out),
    ]


def _kill_when(args, marker, timeout=300):
    """Starts `args`, SIGKILLs it as soon as `marker(…)` is true; returns whether it was killed mid-run."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if marker():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.01)
    _, err = p.communicate(timeout=60)
    raise AssertionError(f"the run ended (rc={p.returncode}) before the marker appeared: {err[-2000:]}")


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


@pytest.mark.slow
@pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="Keras start-ups in subprocesses cost; the in-process resume test of test_recipes.py covers tensorflow",
)
def test_killed_train_resumes_to_the_uninterrupted_result(tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    spec = recipes.single_run("pgd_at", "synthetic", smoke=True, epochs=2, eval_attacks=("clean", "pgd20"))
    reference = recipes.run_single(spec, reference_dir, verbose=0)

    args = _train_args(killed_dir)
    # Mid-training: epoch 1 is backed up, epoch 2 runs.
    assert _kill_when(args, lambda: (_read(killed_dir / "backup" / "training_metadata.json") or {}).get("epoch") == 1)
    assert not (killed_dir / "trained.json").exists()
    # In the evaluation phase: training is recorded as done, the checkpoints are being evaluated.
    assert _kill_when(args, lambda: (killed_dir / "trained.json").exists())
    assert not (killed_dir / "results.json").exists()
    # The rerun (in this process: one Keras start-up less) takes over the killed process's lock.
    with pytest.warns(UserWarning, match="stale lock"):
        recipes.run_single(spec, killed_dir, verbose=0)

    resumed = json.loads((killed_dir / "results.json").read_text())
    assert _comparable(resumed) == _comparable(reference)
    for name in ("eval_best.json", "eval_final.json", "history.json", "train_log.json"):
        assert _comparable(_read(killed_dir / name)) == _comparable(_read(reference_dir / name)), name
    for name in ("best.keras", "final.keras"):
        w1 = keras.saving.load_model(killed_dir / name, compile=False).get_weights()
        w2 = keras.saving.load_model(reference_dir / name, compile=False).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(w1, w2)), name
    assert not (killed_dir / ".keras_rpat.lock").exists() and math.isfinite(resumed["summary"]["clean_final"])
