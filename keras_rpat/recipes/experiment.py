"""One experiment: train, checkpoint and evaluate one run of a recipe.

`run_experiment(spec, out_dir)` is the whole run, in steps a reader can
follow:

1. `_prepare_run_dir`: refuse (or replace) a folder of another configuration,
   skip a finished run;
2. `build.build_run`: the preset with the run's options, the data, the model,
   the compiled trainer;
3. `build.evaluation_settings`: the evaluation protocol, recorded in
   `results.json` and read back by every evaluation below;
4. `_train`: `model.fit` with the robust-evaluation and backup callbacks
   (resumable through `keras.callbacks.BackupAndRestore`);
5. `_evaluate_checkpoints`: clean / PGD-20 / AutoAttack of the best and final
   checkpoints (and the perception analysis of Figures 2 and 5);
6. the results dict, written atomically.

`single_run(...)` is the one run of `keras-rpat train`: a method, a dataset
and options, validated like a recipe's method.
"""

import math
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np

import keras_rpat.layers  # noqa: F401  (registers the custom layers for loading checkpoints)
from keras_rpat import _checks
from keras_rpat import _names
from keras_rpat import attacks as attacks_lib
from keras_rpat import backend as rpat_backend
from keras_rpat import _io
from keras_rpat._progress import format_duration
from keras_rpat import callbacks as callbacks_lib
from keras_rpat import datasets
from keras_rpat import evaluation
from keras_rpat import method_presets
from keras_rpat import presets
from keras_rpat.recipes import plots
from keras_rpat.recipes.build import build_run
from keras_rpat.recipes.build import evaluation_settings
from keras_rpat.recipes.schema import missing_generated_message
from keras_rpat.recipes.schema import variant_metric
from keras_rpat.recipes.schema import RESULTS_FORMAT
from keras_rpat.recipes.schema import RESULTS_VERSION
from keras_rpat.recipes.plan import SMOKE
from keras_rpat.recipes.schema import RecipeError
from keras_rpat.recipes.plan import RunSpec
from keras_rpat.recipes.plan import canonical_options
from keras_rpat.recipes.schema import GENERATED_FRACTION
from keras_rpat.recipes.schema import generated_setting
from keras_rpat.recipes.schema import validate_generated
from keras_rpat.recipes.schema import validate_methods

__all__ = ["preflight", "run_experiment", "single_run"]


def _resolved_config(spec, preset, model, ds, train_seq, eval_settings):
    return _io.jsonable(
        {
            "preset": {
                "name": preset.name,
                "description": preset.describe(),
                "attack": attacks_lib.serialize(preset.attack),
                "losses": [{"class": type(l).__name__, **l.get_config()} for l in preset.losses],
                "weight_averaging": None if preset.weight_averaging is None else preset.weight_averaging.get_config(),
                "post_step_clean_forward": preset.post_step_clean_forward,
                "pipeline": preset.pipeline,
                "two_view": preset.two_view,
                "epochs": preset.epochs,
                "schedule": preset.schedule,
                "milestones": list(preset.milestones),
                "lr_factor": preset.lr_factor,
                "learning_rate": preset.learning_rate,
                "momentum": preset.momentum,
                "weight_decay": preset.weight_decay,
                "normalize": preset.normalize,
            },
            "model": {
                "arch": "small_cnn" if spec.smoke else spec.arch,
                "paper_arch": spec.arch,
                "num_classes": ds.num_classes,
                "input_shape": list(ds.image_shape),
                "stem_stride": spec.stem_stride,
                "normalize": preset.normalize if preset.normalize is not None else _model_normalization(model),
                "params": int(model.count_params()),
            },
            "data": {
                "dataset": "synthetic" if spec.smoke else spec.dataset,
                "paper_dataset": spec.dataset,
                "n_train": int(len(ds.x_train)),
                "n_test": int(len(ds.x_test)),
                "batch_size": spec.batch_size,
                "steps_per_epoch": len(train_seq),
                "cutmix": bool(spec.options.get("cutmix", False)),
                "generated": spec.generated
                and {**spec.generated, "n": len(train_seq.generated), "per_batch": train_seq.num_generated},
            },
            "evaluation": eval_settings,
        }
    )


def _model_normalization(model):
    """The mean and std a network normalises its input with (DeepMind's hold their dataset's), or None."""
    for layer in model.layers:
        if isinstance(layer, keras_rpat.layers.InputNormalization):
            return {"mean": list(layer.mean), "std": list(layer.std)}
    return None


def _is_complete(result, spec):
    return (
        isinstance(result, dict)
        and result.get("format") == RESULTS_FORMAT
        and result.get("complete") is True
        and result.get("fingerprint") == _io.jsonable(spec.run_fingerprint())
    )


def default_echo(verbose):
    """Keras' print when `verbose`, else nothing."""
    return callbacks_lib.print_msg if verbose else (lambda message: None)


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------


def run_experiment(
    spec,
    out_dir,
    data_dir=None,
    verbose=1,
    overwrite=False,
    replace_stale=False,
    echo=None,
    callbacks=None,
    dataset_cache=None,
    checkpoint_every=None,
    tensorboard_dir=None,
):
    """Trains, checkpoints and evaluates one run; writes its `results.json`.

    The run lives in `out_dir / spec.run_dir`: `run.json` (what is being
    run), `backup/` (Keras `BackupAndRestore` state while training),
    `history.json` (clean and robust accuracy per epoch), `train_log.json`
    and `train_log.csv` (Keras' `CSVLogger`: loss terms, clean and robust
    accuracy, learning rate per epoch), `best.keras` / `final.keras`,
    `eval_<checkpoint>.json` (and `perception_<checkpoint>.json`) and finally
    `results.json`. Every file is written atomically.

    Calling it again after an interruption continues from the last completed
    epoch, or mid-epoch from the last `checkpoint_every` backup; an
    interrupted PGD or AutoAttack evaluation continues after its last finished
    batch (`pgd_state_<checkpoint>.json`, `aa_state_<checkpoint>.json`). A
    finished run (complete `results.json`) is skipped.

    Only `spec` and `out_dir` say what is run; the other arguments are
    independent switches of this one call (where the data is, how loud, what
    to do with old files, extra callbacks, a cache shared by `run_recipe`),
    so they stay keyword arguments rather than another object.

    Args:
        spec: a `RunSpec` (from `Recipe.runs` or `single_run`).
        out_dir: the output folder.
        data_dir: where the datasets are (see `keras_rpat.datasets.load`).
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        overwrite: discard the run's earlier files and start over.
        replace_stale: discard the run's files when they belong to another
            configuration (instead of raising).
        echo: callable for status lines (default: Keras' print when
            `verbose`).
        callbacks: extra Keras callbacks for `fit`.
        dataset_cache: dict reused across runs to load each dataset once.
        checkpoint_every: also back the training state up every this many
            steps (batches), so a kill loses at most that many; `None` backs
            up after every epoch only. It does not change the results.
        tensorboard_dir: also write TensorBoard scalars (loss terms, clean
            and robust accuracy, learning rate per epoch) into
            `tensorboard_dir / spec.run_dir`; `None` writes none. A runtime
            switch: not part of the run's fingerprint.

    Returns:
        The results dict (as written to `results.json`), with `"skipped":
        True` when the run was already complete.
    """
    _checks.check_positive_int(checkpoint_every, "checkpoint_every", allow_none=True)
    tensorboard_run_dir = None
    if tensorboard_dir is not None:
        tensorboard_run_dir = Path(_checks.check_writable_dir(tensorboard_dir, "tensorboard_dir")) / spec.run_dir
    echo = echo or default_echo(verbose)
    run_dir = Path(out_dir) / spec.run_dir
    # In a data-parallel job every rank takes rank 0's view of what is done (a kill can leave
    # the ranks' copies of the run one file apart).
    previous = rpat_backend.from_primary(_prepare_run_dir(spec, run_dir, overwrite, replace_stale))
    if previous is not None:
        echo(f"skip (complete): {spec.describe()}")
        return previous
    start = time.time()
    run = build_run(spec, data_dir, dataset_cache)
    settings = evaluation_settings(spec, run.preset)
    _check_disk_space(run, run_dir)
    try:
        trained, history = _train(
            spec, run, run_dir, settings, verbose, echo, callbacks, checkpoint_every, tensorboard_run_dir
        )
    except callbacks_lib.DivergenceError as e:
        _io.atomic_write_json(
            run_dir / "results.json",
            {
                "format": RESULTS_FORMAT,
                "version": RESULTS_VERSION,
                "complete": False,
                "status": "failed",
                "failed": str(e),
                "diverged_at": {"epoch": e.epoch, "step": e.step, "loss": str(e.loss)},
                "recipe": spec.recipe,
                "run": _io.jsonable(spec.to_dict()),
                "fingerprint": _io.jsonable(spec.run_fingerprint()),
            },
        )
        raise
    metrics, perception = _evaluate_checkpoints(spec, run_dir, settings, run.x_test, run.y_test)
    summary = _summarize(metrics, perception, trained, history)
    elapsed = time.time() - start
    result = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "complete": True,
        "recipe": spec.recipe,
        "run": _io.jsonable(spec.to_dict()),
        "fingerprint": _io.jsonable(spec.run_fingerprint()),
        "config": _resolved_config(spec, run.preset, run.model, run.dataset, run.train_seq, settings),
        "provenance": evaluation.provenance(
            run.model, elapsed=elapsed, batch_size=spec.batch_size, sync_batchnorm=run.trainer.sync_batchnorm
        ),
        "wall_time_s": round(elapsed, 3),
        "train_time_s": round(sum((r.get("time") or 0) + (r.get("eval_time") or 0) for r in history), 3),
        "history": _merged_history(run_dir, history),
        "metrics": metrics,
        "perception": perception or None,
        "summary": summary,
    }
    result = _io.jsonable(result)
    _draw_training_curves(spec, run.model, settings, result["history"], trained, run_dir)
    _io.atomic_write_json(run_dir / "results.json", result)
    echo(_summary_line(spec, summary, elapsed))
    return result


def _draw_training_curves(spec, model, settings, history, trained, run_dir):
    """`training_curves.png` of the run (a warning instead when matplotlib is missing)."""
    title = f"{spec.describe()}; model {model.name} ({model.count_params():,} weights)"
    try:
        plots.training_curves(
            history,
            run_dir / "training_curves.png",
            title,
            robust_label=f"PGD-{settings['select_steps']}",
            best_epoch=(trained or {}).get("best_epoch"),
        )
    except ImportError as e:
        warnings.warn(f"training_curves.png was not drawn: {e}", stacklevel=3)


def _prepare_run_dir(spec, run_dir, overwrite, replace_stale):
    """Clears a stale or overwritten run; returns the results of a finished run (else `None`)."""
    fingerprint = _io.jsonable(spec.run_fingerprint())
    run_json = run_dir / "run.json"
    if overwrite and run_dir.is_dir():
        _clear_run_dir(run_dir)
    existing = _io.read_json(run_json)
    if run_json.exists() and not isinstance(existing, dict):
        existing = _corrupt_run_json(spec, run_dir, replace_stale)
    if existing is not None and existing.get("fingerprint") != fingerprint:
        if not replace_stale:
            raise RecipeError(
                f"{run_dir} holds a run of a different configuration "
                f"({describe_diff(existing.get('fingerprint') or {}, fingerprint)}). "
                "Use another output folder, or pass overwrite=True (--overwrite) to replace it."
            )
        warnings.warn(f"Replacing the stale run in {run_dir} (it belongs to another configuration).", stacklevel=3)
        _clear_run_dir(run_dir)
    previous = _io.read_json(run_dir / "results.json")
    if _is_complete(previous, spec):
        _warn_of_corrupt_files(run_dir)
        previous["skipped"] = True
        return previous
    if previous is None and (run_dir / "results.json").exists():
        warnings.warn(
            f"{run_dir / 'results.json'} is corrupt or truncated (not valid JSON): the run goes on from its other "
            "files and writes it again.",
            stacklevel=3,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(run_json, {"spec": _io.jsonable(spec.to_dict()), "fingerprint": fingerprint})
    return None


def _corrupt_run_json(spec, run_dir, replace_stale):
    """What to do with a `run.json` that is not valid JSON: nothing (it is rewritten) when the run's
    `results.json` says it is complete, the run replaced when `replace_stale`, else a `RecipeError`."""
    run_json = run_dir / "run.json"
    if _is_complete(_io.read_json(run_dir / "results.json"), spec):
        warnings.warn(f"{run_json} is corrupt or truncated (not valid JSON); rewriting it.", stacklevel=4)
        fingerprint = _io.jsonable(spec.run_fingerprint())
        _io.atomic_write_json(run_json, {"spec": _io.jsonable(spec.to_dict()), "fingerprint": fingerprint})
        return None
    if not replace_stale:
        raise RecipeError(
            f"{run_json} is corrupt or truncated (not valid JSON), so the files in {run_dir} cannot be told to be "
            "of this configuration. Delete it to go on with the run as this command configures it, or rerun with "
            "--overwrite to start it again."
        )
    warnings.warn(
        f"Replacing the run in {run_dir}: its run.json is corrupt or truncated, so its configuration is unknown.",
        stacklevel=4,
    )
    _clear_run_dir(run_dir)
    return None


def _warn_of_corrupt_files(run_dir):
    """One warning per corrupt `history.json` or checkpoint of a finished run (which is skipped:
    its `results.json` keeps the history and the evaluations)."""
    history = run_dir / "history.json"
    if history.exists() and not isinstance(_io.read_json(history), list):
        warnings.warn(
            f"{history} is corrupt or truncated (not valid JSON); the run is complete and its results.json keeps "
            "the history, so the run is skipped. Delete the file to silence this.",
            stacklevel=4,
        )
    for checkpoint in ("best.keras", "final.keras"):
        path = run_dir / checkpoint
        if path.exists() and not _is_intact_zip(path):
            warnings.warn(
                f"{path} is corrupt or truncated; the run is complete and its results.json keeps the evaluations, "
                "so the run is skipped. To get the checkpoint back, rerun with --overwrite (this retrains the run).",
                stacklevel=4,
            )


def _is_intact_zip(path):
    """Whether `path` is a zip file (a `.keras` model) whose members all pass their CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


# What a run writes besides its checkpoints and backups (logs, evaluations, curves), and the
# container overhead of each `.keras` / `.weights.h5` file (measured: 58 KB for a 4.5 KB model).
_RUN_FILES_BYTES = 2**19
_FILE_OVERHEAD_BYTES = 2**16


def _check_disk_space(run, run_dir):
    """Refuses (`_io.DiskSpaceError`) to train a run whose checkpoints and backups would not fit on the
    disk of its folder, before the first step (on every rank when one's disk is short).

    The peak: `best.keras`, `final.keras` and the new one being written (the model's weights), and
    two training backups (weights, teacher and optimizer state: the new one before the old is
    removed), plus the other files.
    """
    error = None
    if not (run_dir / "trained.json").exists():
        model = _weight_bytes(run.model.weights) + _FILE_OVERHEAD_BYTES
        # The optimizer's slots are built at the first step: one per trainable weight (SGD momentum).
        optimizer = max(_weight_bytes(run.trainer.optimizer.variables), _weight_bytes(run.trainer.trainable_weights))
        backup = _weight_bytes(run.trainer.weights) + optimizer + _FILE_OVERHEAD_BYTES
        try:
            _io.check_free_space(run_dir, 3 * model + 2 * backup + _RUN_FILES_BYTES, "its checkpoints and backups")
        except _io.DiskSpaceError as e:
            error = e
    errors = [e for e in rpat_backend.all_gather_object(error) or [error] if e is not None]
    if errors:
        raise errors[0]


def _weight_bytes(variables):
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)


def _train(spec, run, run_dir, settings, verbose, echo, callbacks, checkpoint_every, tensorboard_run_dir):
    """Trains unless `trained.json` says it is done; returns `(trained, history)`.

    The parameters are the pieces `run_experiment` already holds; bundling
    them into an object used only here would not make the step clearer.
    """
    trained_path = run_dir / "trained.json"
    history_path = run_dir / "history.json"
    robust = callbacks_lib.RobustEvaluation(
        run.x_test,
        run.y_test,
        num_steps=settings["select_steps"],
        checkpoint_dir=run_dir,
        history_path=history_path,
        batch_size=settings["batch_size"],
        seed=spec.seed,
        verbose=1 if verbose else 0,
    )
    if trained_path.exists() and _io.read_json(trained_path) is None:
        raise RecipeError(
            f"{trained_path} is corrupt or truncated (not valid JSON). Delete it to retrain the run from its "
            "backup (or from scratch), or rerun with --overwrite."
        )
    trained = rpat_backend.from_primary(_io.read_json(trained_path))
    # Rank 0's history decides (a rank r > 0 killed at the end of training may lack its copy).
    if trained is not None and not rpat_backend.from_primary(isinstance(_io.read_json(history_path), list)):
        state = "corrupt or truncated (not valid JSON)" if history_path.exists() else "missing"
        raise RecipeError(
            f"{history_path} is {state}, but {trained_path} says the run is trained. Delete both files to "
            "retrain the run, or rerun with --overwrite."
        )
    if trained is None:
        backup_dir = run_dir / "backup"
        rpat_backend.share_folder(backup_dir)  # every rank resumes from rank 0's backup
        meta = _io.read_json(backup_dir / "training_metadata.json") or {}
        initial_epoch, initial_batch = int(meta.get("epoch", 0)), int(meta.get("batch", 0))
        if initial_epoch or initial_batch:
            echo(f"resuming {spec.describe()} after epoch {initial_epoch}, batch {initial_batch}")
        guard = callbacks_lib.DivergenceGuard(
            hint=_divergence_hint(run, settings), kept="The checkpoints and the backup keep the last good state."
        )
        backup = callbacks_lib.RunBackup(str(backup_dir), save_freq=checkpoint_every or "epoch")
        fit_callbacks = [
            guard,
            robust,
            callbacks_lib.EpochLog(str(run_dir / "train_log.json")),
            # After `robust`, which adds val_clean_acc, val_robust_acc and learning_rate to the logs.
            callbacks_lib.CSVLog(str(run_dir / "train_log.csv"), append=True),
            backup,
        ]
        if tensorboard_run_dir is not None:
            fit_callbacks.insert(-1, callbacks_lib.TensorBoardScalars(tensorboard_run_dir))  # after `robust` too
        fit_callbacks += list(callbacks or [])
        # `shuffle=False`: TrainSequence reshuffles itself from (seed, epoch), so the
        # batch order does not depend on global random state and a resumed run
        # sees the same batches as an uninterrupted one.
        verbosity = callbacks_lib.console_verbosity(verbose)
        if initial_batch:
            # `fit` cannot start mid-epoch: the rest of the interrupted epoch is a `fit` of its own.
            run.train_seq.set_epoch(initial_epoch)
            guard.batch_offset = backup.batch_offset = initial_batch
            backup.delete_checkpoint = False
            rest = datasets.BatchesFrom(run.train_seq, initial_batch)
            run.trainer.fit(rest, epochs=initial_epoch + 1, verbose=verbosity, callbacks=fit_callbacks, shuffle=False)
            backup.delete_checkpoint = True
            initial_epoch += 1
        if not run.trainer.stop_training:
            run.train_seq.set_epoch(initial_epoch)
            run.trainer.fit(
                run.train_seq, epochs=spec.epochs, verbose=verbosity, callbacks=fit_callbacks, shuffle=False
            )
        _io.atomic_write_json(
            trained_path, {"epochs": spec.epochs, "best_epoch": robust.best_epoch, "best_robust": robust.best}
        )
        trained = _io.read_json(trained_path)
    return trained, _io.read_json(history_path) or []


def _divergence_hint(run, settings):
    """`learning rate 0.1, epsilon 8/255, step 2/255` for the divergence error."""
    return (
        f"learning rate {run.preset.learning_rate:g}, attack epsilon {settings['epsilon'] * 255:.4g}/255, "
        f"step {settings['step_size'] * 255:.4g}/255"
    )


def _merged_history(run_dir, history):
    """The robust-evaluation history with Keras' per-epoch logs merged in."""
    path = run_dir / "train_log.json"
    records = _io.read_json(path)
    if path.exists() and not isinstance(records, list):
        warnings.warn(
            f"{path} is corrupt or truncated (not valid JSON): results.json leaves out its logs.", stacklevel=3
        )
    train_log = {r["epoch"]: r for r in (records if isinstance(records, list) else [])}
    return [dict(train_log.get(r["epoch"], {}), **r) for r in history]


def _evaluate_checkpoints(spec, run_dir, settings, x_test, y_test):
    """Evaluates every checkpoint (each result cached in `eval_<ckpt>.json`); returns `(metrics, perception)`."""
    metrics, perception = {}, {}
    for ckpt in spec.checkpoints:
        eval_path = run_dir / f"eval_{ckpt}.json"
        result = rpat_backend.from_primary(_io.read_json(eval_path))
        if result is None:
            result = evaluation.evaluate(
                _load_checkpoint(run_dir / f"{ckpt}.keras"),
                x_test,
                y_test,
                attacks=spec.eval_attacks,
                norm=settings["norm"],
                epsilon=settings["epsilon"],
                step_size=settings["step_size"],
                # A smoke run shortens every PGD evaluation; a real one runs the steps each name says (cw50).
                num_steps=settings["pgd_steps"] if spec.smoke else None,
                n=settings["n"],
                batch_size=settings["batch_size"],
                seed=spec.seed,
                aa_version=settings["autoattack_version"],
                aa_attacks=settings["autoattack_attacks"],
                aa_options=settings["autoattack_options"],
                aa_batch_size=settings["autoattack_batch_size"],
                aa_state_path=str(run_dir / f"aa_state_{ckpt}.json"),
                pgd_state_path=run_dir / f"pgd_state_{ckpt}.json",
            ).to_dict()
            _io.atomic_write_json(eval_path, result)
        metrics[ckpt] = result
        p = settings["perception"]
        if p is not None and p["checkpoint"] == ckpt:
            perception[ckpt] = _perception(spec, run_dir, ckpt, settings, x_test, y_test)
    return metrics, perception


def _perception(spec, run_dir, ckpt, settings, x_test, y_test):
    """The perception analysis of one checkpoint (cached in `perception_<ckpt>.json`).

    Same inputs as `_evaluate_checkpoints`, plus the checkpoint's name.
    """
    path = run_dir / f"perception_{ckpt}.json"
    result = rpat_backend.from_primary(_io.read_json(path))
    if result is not None:
        return result
    p = settings["perception"]
    idx = _checks.strided_indices(len(x_test), settings["n"])  # the images `evaluate(n=...)` uses
    x_p, y_p = (x_test, y_test) if idx is None else (x_test[idx], y_test[idx])
    result = evaluation.perception_analysis(
        _load_checkpoint(run_dir / f"{ckpt}.keras"),
        x_p,
        y_p,
        perturbation=spec.perturbation,
        epsilon=p["epsilon"],
        step_size=p["step_size"],
        num_steps=p["num_steps"],
        batch_size=settings["batch_size"],
        seed=spec.seed,
    ).to_dict()
    _io.atomic_write_json(path, result)
    return result


_RUN_FILES = (
    "run.json",
    "results.json",
    "trained.json",
    "history.json",
    "train_log.json",
    "train_log.csv",
    "training_curves.png",
    "best.keras",
    "final.keras",
)
_RUN_PATTERNS = ("eval_*.json", "perception_*.json", "aa_state_*.json", "pgd_state_*.json", ".*.tmp", ".*.keras")


def _clear_run_dir(run_dir):
    """Deletes the files a run writes (and nothing else) from its folder."""
    run_dir = Path(run_dir)
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for pattern in _RUN_PATTERNS:
        for path in run_dir.glob(pattern):
            if path.is_file():
                path.unlink()
    backup = run_dir / "backup"
    if backup.is_dir():
        shutil.rmtree(backup)


def _load_checkpoint(path):
    if not Path(path).exists():
        raise RecipeError(
            f"Checkpoint {path} is missing; delete {Path(path).parent / 'trained.json'} to retrain the run."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise RecipeError(
            f"Could not load the checkpoint {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]}): it is "
            f"corrupt or truncated. Delete it and {Path(path).parent / 'trained.json'} to retrain the run, "
            "or rerun with --overwrite."
        ) from None


def _summarize(metrics, perception, trained, history):
    s = {"best_epoch": None if trained is None else trained.get("best_epoch"), "epochs_trained": len(history)}
    for ckpt, r in metrics.items():
        s[f"clean_{ckpt}"] = r.get("clean")
        s[f"pgd20_{ckpt}"] = r.get("pgd20")
        s[f"aa_{ckpt}"] = r.get("autoattack")
        for name, variant in (r.get("pgd_variants") or {}).items():  # cw20, pgd20x5...: `cw20_best`
            s[f"{name}_{ckpt}"] = variant["accuracy"]
    for ckpt, suffix in (("best", ""), ("final", "_final")):
        clean = s.get(f"clean_{ckpt}")
        robust = s.get(f"aa_{ckpt}")
        if robust is None:
            robust = s.get(f"pgd20_{ckpt}")
        if clean is not None and robust is not None:
            s[f"mean{suffix}"], s[f"nrr{suffix}"] = evaluation.mean_nrr(clean, robust)
    for ckpt, p in perception.items():
        s["mse_success"] = p.get("mse_success")
        s["mse_failure"] = p.get("mse_failure")
        s["clean_acc"] = p.get("clean_accuracy")
        s["perturbed_acc"] = p.get("perturbed_accuracy")
        s["perception_checkpoint"] = ckpt
    return s


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _summary_line(spec, s, elapsed):
    parts = []
    # A smoke run's evaluation is smaller than the names of its metrics say.
    pgd = f"PGD-{SMOKE['eval_steps']}" if spec.smoke else f"PGD-{evaluation.PGD_EVAL_STEPS}"
    aa = "+".join(a.upper() for a in SMOKE["aa_attacks"]) if spec.smoke else "AA"
    for ckpt in spec.checkpoints:
        items = [f"clean {_fmt(s.get(f'clean_{ckpt}'))}"]
        if s.get(f"pgd20_{ckpt}") is not None:
            items.append(f"{pgd} {_fmt(s.get(f'pgd20_{ckpt}'))}")
        for name in spec.eval_attacks:  # cw20, pgd20x5...: `CW-20 12.50` (CW-2 in a smoke run)
            if variant_metric(f"{name}_{ckpt}") is not None and s.get(f"{name}_{ckpt}") is not None:
                loss, steps, restarts = _names.pgd_evaluation(name)
                label = _names.pgd_label(loss, SMOKE["eval_steps"] if spec.smoke else steps, restarts)
                items.append(f"{label} {_fmt(s[f'{name}_{ckpt}'])}")
        if s.get(f"aa_{ckpt}") is not None:
            items.append(f"{aa} {_fmt(s.get(f'aa_{ckpt}'))}")
        label = ckpt + (f" (epoch {s['best_epoch']})" if ckpt == "best" and s.get("best_epoch") else "")
        parts.append(f"{label}: " + ", ".join(items))
    if s.get("mean") is not None:
        parts.append(f"Mean {s['mean']:.2f}, NRR {s['nrr']:.2f}")
    if s.get("mse_success") is not None or s.get("mse_failure") is not None:
        parts.append(f"MSE success {_fmt(s.get('mse_success'), 4)} / failure {_fmt(s.get('mse_failure'), 4)}")
    what = f"[smoke: small_cnn, synthetic] {spec.norm}" if spec.smoke else f"{spec.dataset} {spec.arch} {spec.norm}"
    return f"done {spec.method} {what} seed {spec.seed}: " + "; ".join(parts) + f" [{format_duration(elapsed)}]"


def describe_diff(old, new):
    """`key: old -> new; ...` for the keys whose values differ."""
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed) or "no difference"


# ---------------------------------------------------------------------------
# The single run of `keras-rpat train`
# ---------------------------------------------------------------------------

TRAIN_BATCH_SIZE = 128


def single_run(
    method,
    dataset,
    arch=None,
    norm="linf",
    seed=0,
    epochs=None,
    batch_size=None,
    smoke=False,
    generated_data=None,
    generated_fraction=None,
    **run_options,
):
    """The `RunSpec` of one training run outside a recipe (`keras-rpat train`).

    The method's options are validated exactly like a recipe method's.
    Training-schedule arguments are named; `run_options` are the method
    options of a recipe (`cutmix`, `stronger_attack`, `lr_factor`, `beta`,
    `proxy`, `distance`, `alpha`, `alpha_sampling`, `rp_weight`,
    `l2_step_size`, `teacher_training`) plus `eval_attacks` and `checkpoints`. The arguments are
    the ones of the command; a reader sees each one once, here.

    Args:
        method: a preset name (aliases work).
        dataset: a dataset name (`keras_rpat.datasets.list_datasets()`) or an
            `.npz` path.
        arch: the architecture; default: the preset's.
        norm: `"linf"` or `"l2"`.
        seed: the seed.
        epochs: default: the preset's (1 with `smoke`).
        batch_size: default 128 (32 with `smoke`).
        smoke: tiny synthetic data and model.
        generated_data: an `.npz` of generated images (`image`, `label`)
            mixed into every training batch (Wang et al. 2023), or None.
        generated_fraction: their share of each batch, in (0, 1); default
            0.7 (Wang et al. 2023) when `generated_data` is given.
        **run_options: method options; options that are `None` or `False`
            are left out.

    Returns:
        A `RunSpec` with `recipe="train"` and `run_dir=""`.

    Raises:
        RecipeError: an option is invalid for the method.
    """
    method = presets.canonical_name(method)
    norm = _checks.canonical_norm(norm)
    eval_attacks = tuple(run_options.pop("eval_attacks", ("clean", "pgd20", "autoattack")))
    checkpoints = tuple(run_options.pop("checkpoints", ("best", "final")))
    # `is not`: 0 and 0.0 are values (`0.0 == False`, so `v not in (None, False)` would drop them).
    options = {k: v for k, v in run_options.items() if v is not None and v is not False}
    raw = {"id": "run", "preset": method, "label": method, "options": dict(options)}
    try:
        [m] = validate_methods("train", [raw], {"norms": [norm], "perception": None})
    except RecipeError as e:
        raise RecipeError(str(e).replace("train methods[0]: ", "")) from None
    if generated_data is None and generated_fraction is not None:
        raise RecipeError(
            f"generated_fraction={generated_fraction!r} needs generated data: pass generated_data (--generated-data)."
        )
    config = {}
    if generated_data is not None:
        fraction = GENERATED_FRACTION if generated_fraction is None else generated_fraction
        config = {"generated_data": os.fspath(generated_data), "generated_fraction": fraction}
    generated = generated_setting(validate_generated("train", config))
    preset = presets.get(method, norm=norm)
    m.id = method
    spec_options = canonical_options(m, norm)
    epochs = epochs or (SMOKE["epochs"] if smoke else preset.epochs)
    batch_size = batch_size or (SMOKE["batch_size"] if smoke else TRAIN_BATCH_SIZE)
    return RunSpec(
        recipe="train",
        method=method,
        methods=(method,),
        preset=method,
        label=method,
        options=spec_options,
        dataset=dataset,
        arch=arch or preset.arch,
        norm=norm,
        seed=seed,
        stem_stride=2 if dataset == "tiny_imagenet" else 1,
        epochs=epochs,
        batch_size=batch_size,
        eval_attacks=eval_attacks,
        checkpoints=checkpoints,
        l2_step_size=spec_options.get("l2_step_size", method_presets.L2_STEP_SIZE),
        smoke=smoke,
        generated=generated,
        fingerprint={"recipe": "train", "epochs": epochs, "batch_size": batch_size, "smoke": smoke},
        run_dir="",
    )


def preflight(runs, data_dir):
    """Fails before the first run when a local dataset (Tiny-ImageNet, an `.npz` file) is missing."""
    data_dir = None if data_dir is None else os.fspath(data_dir)
    for dataset in sorted({r.dataset for r in runs if not r.smoke and str(r.dataset).lower().endswith(".npz")}):
        datasets.find_npz(dataset, data_dir)
    if any(not r.smoke and r.generated is not None and r.generated["path"] is None for r in runs):
        raise RecipeError(missing_generated_message(runs[0].recipe))
    for path in sorted({r.generated["path"] for r in runs if not r.smoke and r.generated is not None}):
        datasets.find_generated(path, data_dir)
    if any(r.smoke for r in runs) or not any(r.dataset == "tiny_imagenet" for r in runs):
        return
    datasets.find_tiny_imagenet(data_dir)
