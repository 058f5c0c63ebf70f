"""Keras callbacks for adversarial training.

`RobustEvaluation` is the per-epoch robustness check of the reference code
bases (docs/algorithms.md#evaluation-protocol): clean and PGD accuracy on the test set after every
epoch, the best checkpoint (highest robust accuracy, strict improvement) and
the final one.
"""

import json
import logging
import math
import os
import sys
import time

import keras

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import _io
from keras_rpat import _tensorboard
from keras_rpat import attacks as attacks_lib
from keras_rpat import backend as rpat_backend
from keras_rpat import evaluation
from keras_rpat.divergence import DivergenceError
from keras_rpat.divergence import DivergenceGuard

__all__ = [
    "CSVLog",
    "DivergenceError",
    "DivergenceGuard",
    "EpochLog",
    "RobustEvaluation",
    "RunBackup",
    "TensorBoardScalars",
    "console_verbosity",
    "tensorboard_tag",
]


def print_msg(message):
    """A line of callback output, where Keras prints its own: stdout, or the log after
    `keras.config.disable_interactive_logging()`."""
    if keras.config.is_interactive_logging_enabled():
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logging.getLogger(__name__).info(message)


class RobustEvaluation(keras.callbacks.Callback):
    """Clean and PGD accuracy after every epoch; best and final checkpoints.

    After every `every` epochs (and after the last one) the callback
    evaluates the trainer's `evaluation_model` (the weight-averaged model for
    ReBAT / RPAT++, else the classifier) on the test set: clean accuracy and
    the accuracy under a PGD attack with a random start, in inference mode.
    By default the attack is a `num_steps`-step PGD (10, as the authors select
    checkpoints; docs/algorithms.md#best-checkpoint) in the norm, budget and step of the
    trainer's training attack (L-inf 8/255, step 2/255 when the trainer has no
    PGD attack), with the advertorch algorithm.

    The evaluated model is saved to `checkpoint_dir/best.keras` whenever its
    robust accuracy is strictly higher than every earlier one, and to
    `checkpoint_dir/final.keras` after every evaluated epoch (so after the
    last epoch it is the final model). Files are written atomically.

    Per-epoch records `{"epoch", "clean", "robust", "lr", "time",
    "eval_time"}` (epochs counted from 1, accuracies in percent, `time` the
    epoch's wall time in seconds) are kept in `history` and written to
    `history_path` as JSON. `val_clean_acc` and `val_robust_acc` (fractions,
    like the trainer's `clean_acc`) are added to the epoch logs, so Keras'
    `History` and progress bar show them.

    Resuming with `fit(..., initial_epoch=k)`: an existing history file is
    loaded, records after epoch `k` are dropped, and the best accuracy is
    restored from it.

    Args:
        x_test: test images in the model's layout, float in [0, 1].
        y_test: integer test labels.
        attack: optional `keras_rpat.attacks.Attack` to evaluate with instead
            of the default PGD.
        every: evaluate every `every` epochs (the last epoch is always
            evaluated).
        num_steps: steps of the default PGD (10; 20 for PGD-20 selection).
        checkpoint_dir: folder for `best.keras` and `final.keras`; `None`
            saves nothing.
        history_path: JSON file for the per-epoch records; `None` keeps them
            in memory only.
        n: evaluate on `n` evenly strided test examples; `None` uses all.
        batch_size: evaluation batch size.
        seed: seed of the PGD random start.
        verbose: 1 prints one line per evaluation (where Keras prints its own),
            0 is silent.

    Attributes:
        history: list of per-epoch records.
        best: best robust accuracy so far (percent), or `None`.
        best_epoch: its epoch (counted from 1), or `None`.

    Example:

    ```python
    callback = keras_rpat.callbacks.RobustEvaluation(
        x_test, y_test, checkpoint_dir="runs/pgd_at", history_path="runs/pgd_at/history.json")
    trainer.fit(train_data, epochs=110, callbacks=[callback])
    callback.best, callback.best_epoch
    ```
    """

    def __init__(
        self,
        x_test,
        y_test,
        attack=None,
        every=1,
        num_steps=10,
        checkpoint_dir=None,
        history_path=None,
        n=None,
        batch_size=evaluation.EVAL_BATCH_SIZE,
        seed=0,
        verbose=1,
    ):
        super().__init__()
        if attack is not None and not isinstance(attack, attacks_lib.Attack):
            raise ValueError(
                "`attack` must be a keras_rpat.attacks.Attack or None (a PGD in the "
                f"training attack's threat model). Received: {attack!r}"
            )
        _checks.check_positive_int(every, "every")
        _checks.check_positive_int(batch_size, "batch_size")
        _checks.check_positive_int(n, "n", allow_none=True)
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"`num_steps` must be a positive integer. Received: num_steps={num_steps!r}")
        # Checked now, not after the first epoch: images in [0, 1], integer labels, equal lengths.
        x_test = _data_checks.to_numpy(x_test)
        fmt = _data_checks.shape_data_format(x_test.shape) or "channels_last"
        x_test = _data_checks.validate_images(x_test, "x_test", data_format=fmt)
        y_test = _data_checks.label_indices(y_test, None, "y_test")
        if len(x_test) != len(y_test):
            raise ValueError(
                f"`x_test` and `y_test` differ in length. Received: len(x_test)={len(x_test)}, len(y_test)={len(y_test)}"
            )
        idx = _checks.strided_indices(len(x_test), n)
        if idx is not None:
            x_test, y_test = x_test[idx], y_test[idx]
        self.x_test = x_test
        self.y_test = y_test
        self.attack = attack
        self.every = int(every)
        self.num_steps = int(num_steps)
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.history_path = None if history_path is None else os.fspath(history_path)
        self.n = n
        self.batch_size = int(batch_size)
        self.seed = seed
        self.verbose = verbose
        self.history = []
        self.best = None
        self.best_epoch = None
        self._checked = False
        self._epoch_start = None
        self._first_epoch_of_fit = True

    # ------------------------------------------------------------------ paths
    @property
    def best_path(self):
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, "best.keras")

    @property
    def final_path(self):
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, "final.keras")

    # ------------------------------------------------------------------ helpers
    def evaluation_model(self):
        """The model that is evaluated and saved."""
        return _data_checks.evaluation_model(self.model)

    def evaluation_attack(self):
        """The attack used for the robust accuracy."""
        if self.attack is not None:
            return self.attack
        norm, epsilon, step_size = "linf", 8 / 255, 2 / 255
        train_attack = getattr(self.model, "attack", None)
        if isinstance(train_attack, attacks_lib.FGSM):
            norm, epsilon, step_size = "linf", train_attack.epsilon, train_attack.epsilon / 4
        elif isinstance(train_attack, attacks_lib.PGD):
            # The base (epoch-0) parameters: validation keeps the nominal budget
            # even when the training adversary is strengthened (Table 6).
            norm, epsilon, step_size = train_attack.norm, train_attack.epsilon, train_attack.step_size
        return evaluation.evaluation_pgd(norm, epsilon, step_size, self.num_steps, self.seed)

    def _current_lr(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        try:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except Exception:
            return None

    def _write_history(self):
        if self.history_path is not None:
            _io.atomic_write_json(self.history_path, self.history)

    def _restore(self, epoch):
        """Keeps records up to `epoch` (1-based count of finished epochs)."""
        if not self.history and self.history_path is not None and os.path.exists(self.history_path):
            try:
                with open(self.history_path) as f:
                    loaded = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(
                    f"Could not read the evaluation history {self.history_path}: {e}. "
                    "Delete it or pass another `history_path`."
                ) from None
            if not isinstance(loaded, list):
                raise ValueError(f"{self.history_path} does not hold a list of per-epoch records.")
            self.history = loaded
        self.history = [r for r in self.history if int(r["epoch"]) <= epoch]
        self.best, self.best_epoch = None, None
        for record in self.history:
            if record.get("robust") is not None and (self.best is None or record["robust"] > self.best):
                self.best, self.best_epoch = record["robust"], int(record["epoch"])

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch_of_fit:
            self._restore(epoch)
            self._first_epoch_of_fit = False
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        epoch_time = None if self._epoch_start is None else time.time() - self._epoch_start
        total = (self.params or {}).get("epochs")
        last = total is not None and epoch + 1 >= total
        if (epoch + 1) % self.every and not last:
            return
        start = time.time()
        model = self.evaluation_model()
        if not self._checked:
            self.x_test, self.y_test, _, _ = _data_checks.check_data(model, self.x_test, self.y_test)
            self._checked = True
        clean_correct = evaluation.clean_correct(model, self.x_test, self.y_test, self.batch_size)
        robust_correct = evaluation.attack_correct(
            model, self.evaluation_attack(), self.x_test, self.y_test, self.batch_size
        )
        n = len(self.x_test)
        clean = evaluation.percent(clean_correct, n)
        robust = evaluation.percent(robust_correct, n)
        record = {
            "epoch": epoch + 1,
            "clean": clean,
            "robust": robust,
            "lr": self._current_lr(),
            "time": None if epoch_time is None else round(epoch_time, 3),
            "eval_time": round(time.time() - start, 3),
        }
        self.history = [r for r in self.history if int(r["epoch"]) != epoch + 1]
        self.history.append(record)
        improved = self.best is None or robust > self.best
        if improved:
            self.best, self.best_epoch = robust, epoch + 1
            if self.best_path is not None:
                _io.atomic_save_model(model, self.best_path)
        if self.final_path is not None:
            _io.atomic_save_model(model, self.final_path)
        self._write_history()
        if logs is not None:
            logs["val_clean_acc"] = clean / 100.0
            logs["val_robust_acc"] = robust / 100.0
            if record["lr"] is not None:
                logs.setdefault("learning_rate", record["lr"])
        if self.verbose:
            print_msg(
                f"\nEpoch {epoch + 1}: clean {clean:.2f}%, robust {robust:.2f}%"
                + (" (best)" if improved else f" (best {self.best:.2f}% at epoch {self.best_epoch})")
            )


def console_verbosity(verbose, stream=None):
    """The `verbose` of `fit` for this console: progress bars (1) only on a terminal.

    Keras' progress bars redraw with ANSI codes; when the output is a file or a
    pipe, 1 becomes 2 (one plain line per epoch). 0 stays silent.
    """
    stream = sys.stdout if stream is None else stream
    if verbose == 1 and not (hasattr(stream, "isatty") and stream.isatty()):
        return 2
    return verbose


class EpochLog(keras.callbacks.Callback):
    """Keeps Keras' per-epoch logs in a JSON file that survives a resume.

    Args:
        path: the JSON file (a list of `{"epoch": ..., <metric>: ...}`).
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.records = []
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first:
            self._first = False
            self.records = _io.read_json(self.path) or []
            self.records = [r for r in self.records if r["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        for k, v in (logs or {}).items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            record[k] = v if math.isfinite(v) else None
        self.records = [r for r in self.records if r["epoch"] != epoch + 1] + [record]
        _io.atomic_write_json(self.path, self.records)


class CSVLog(keras.callbacks.CSVLogger):
    """Keras' `CSVLogger`, whose write errors (a full disk) name its file and the fix."""

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except OSError as e:
            raise _io.write_error(self.filename, e) from e


def tensorboard_tag(key):
    """The TensorBoard tag of a Keras log key: `eval/robust_acc`, `train/adv_acc`, `optimizer/learning_rate`, `loss/rpat`."""
    if key.startswith("val_"):
        return "eval/" + key[len("val_") :]
    if key == "learning_rate":
        return "optimizer/learning_rate"
    if key.endswith("_acc"):
        return "train/" + key
    return "loss/" + key


class TensorBoardScalars(keras.callbacks.Callback):
    """Writes every numeric per-epoch log as a TensorBoard scalar (step = the epoch, from 1).

    Tags are grouped by `tensorboard_tag`: the loss and its terms under
    `loss/`, training accuracies under `train/`, the per-epoch evaluation
    (`val_clean_acc`, `val_robust_acc`) under `eval/` and the learning rate
    under `optimizer/`. Place it after `RobustEvaluation`, which adds the
    evaluation and the learning rate to the logs. The event file is written by
    `keras_rpat._tensorboard` (no TensorFlow, on every backend) and flushed
    after each epoch.

    Args:
        log_dir: the folder for the event file (created if missing).
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def on_train_begin(self, logs=None):
        if self._writer is None:
            self._writer = _tensorboard.EventFileWriter(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        scalars = {}
        for key, value in (logs or {}).items():
            try:
                scalars[tensorboard_tag(key)] = float(value)
            except (TypeError, ValueError):
                continue
        self.on_train_begin()
        self._writer.add_scalars(epoch + 1, scalars)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that is atomic, keeps the random state and can back up mid-epoch.

    A backup is the trainer's variables (weights, optimizer) in
    `backup_<epoch>_<batch>.weights.h5` and `training_metadata.json`, which
    names that file, counts the finished epochs (`epoch`) and the finished
    batches of the running one (`batch`), and holds what `save_weights` does
    not: the state of the trainer's and the attacks' `SeedGenerator`s (and, on
    torch, of the device generators behind them, through the backend's
    `get_random_state` / `set_random_state`) and the running metric states
    of the epoch. Both files are written atomically and the metadata last, so
    a kill at any moment leaves one complete backup.

    With `save_freq="epoch"` a backup is made after every epoch; with an
    integer `N` also after every `N` batches of an epoch. Keras' `fit` cannot
    start mid-epoch, so resuming from a mid-epoch backup (`batch > 0`) is the
    caller's job: train the rest of that epoch with
    `keras_rpat.datasets.BatchesFrom(sequence, batch)` and `batch_offset =
    batch` set here (as `keras_rpat.recipes` does), then the later epochs.
    The restored metric states make that epoch's logs equal to an
    uninterrupted one's.

    A backup that cannot be read (corrupt, truncated, or of another model)
    raises a `RuntimeError` naming the file and the fix.

    Args:
        backup_dir: the backup folder.
        save_freq: `"epoch"`, or back up every `save_freq` batches as well.
        delete_checkpoint: delete the folder when `fit` ends.

    Attributes:
        batch_offset: batches of the current epoch trained before this `fit`
            (set it when resuming mid-epoch).
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        if save_freq != "epoch":
            save_freq = _checks.check_positive_int(save_freq, "save_freq")
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint, double_checkpoint=False)
        self.batch_offset = 0
        self._metadata = None
        self._first_epoch_of_fit = True

    # ------------------------------------------------------------------ state
    def _generators(self):
        out = {}
        for name in ("attack", "eval_attack"):
            attack = getattr(self.model, name, None)
            if attack is not None and hasattr(attack, "seed_generator"):
                out[name] = attack.seed_generator
        trainer_generator = getattr(self.model, "seed_generator", None)
        if trainer_generator is not None:
            out["trainer"] = trainer_generator
        return out

    def _random_state(self):
        state = {"variables": {}, "backend": {}}
        for name, generator in self._generators().items():
            one = rpat_backend.get_generator_state(generator)
            state["variables"][name] = one["variable"]
            if "backend" in one:
                state["backend"][name] = one["backend"]
        return state

    def _set_random_state(self, state):
        for name, generator in self._generators().items():
            one = {}
            if name in state.get("variables", {}):
                one["variable"] = state["variables"][name]
            if name in state.get("backend", {}):
                one["backend"] = state["backend"][name]
            rpat_backend.set_generator_state(generator, one)

    def _metric_states(self):
        return [
            [keras.ops.convert_to_numpy(v).tolist() for v in metric.variables]
            for metric in getattr(self.model, "metrics", [])
        ]

    def _set_metric_states(self, states):
        metrics = getattr(self.model, "metrics", [])
        if len(states) != len(metrics):
            raise ValueError(f"the backup holds {len(states)} metric states for {len(metrics)} metrics")
        for metric, values in zip(metrics, states):
            for variable, value in zip(metric.variables, values):
                variable.assign(keras.ops.convert_to_tensor(value, dtype=variable.dtype))

    # ------------------------------------------------------------------ load / save
    # Private Keras, as no public way resumes `fit` at an epoch: Keras' `_load_model` loads `_weights_path` and
    # starts `fit` at the epoch of `_training_metadata_path`; `_current_epoch` counts the finished epochs
    # (tests/test_keras_pins.py).
    def on_train_begin(self, logs=None):
        self._first_epoch_of_fit = True
        try:
            self._load_model()
        except Exception as e:
            raise RuntimeError(
                f"Could not resume from the training backup in {self.backup_dir} "
                f"({os.path.basename(self._weights_path)} / {os.path.basename(self._training_metadata_path)}): "
                f"{type(e).__name__}: {' '.join(str(e).split())[:300]}. The backup is corrupt, truncated or of "
                f"another model: delete {self.backup_dir} to retrain the run from its first epoch, or rerun "
                "with --overwrite."
            ) from e

    def _load_model(self):
        self._metadata = None
        if os.path.exists(self._training_metadata_path):
            with open(self._training_metadata_path) as f:
                self._metadata = json.load(f)
            self._weights_path = os.path.join(
                self.backup_dir, self._metadata.get("weights", os.path.basename(self._weights_path))
            )
        super()._load_model()
        if self._metadata is not None:
            self._current_epoch = int(self._metadata["epoch"])
            self._set_random_state(self._metadata.get("random_state", {}))

    def on_epoch_begin(self, epoch, logs=None):
        # `fit` resets the metrics just before this: a mid-epoch backup's running states come back here.
        if self._first_epoch_of_fit and self._metadata is not None and self._metadata.get("batch", 0):
            self._set_metric_states(self._metadata.get("metrics", []))
        self._first_epoch_of_fit = False

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        self._current_epoch = epoch + 1
        self._save_model()

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        done = self.batch_offset + batch + 1
        total = self.batch_offset + int((self.params or {}).get("steps") or 0)
        if done % self.save_freq == 0 and done != total:  # the last batch is backed up by the epoch's end
            self._save_model(batch=done)

    def _save_model(self, batch=0):
        name = f"backup_{self._current_epoch}_{batch}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        with _io.atomic_path(path, suffix=".weights.h5") as tmp:
            self.model.save_weights(filepath=tmp, overwrite=True)
        record = {"epoch": self._current_epoch, "batch": batch, "weights": name, "random_state": self._random_state()}
        if batch:
            record["metrics"] = self._metric_states()
        _io.atomic_write_json(self._training_metadata_path, record)
        self._weights_path = path
        for old in os.listdir(self.backup_dir):
            if old.endswith(".weights.h5") and old != name:
                os.remove(os.path.join(self.backup_dir, old))
