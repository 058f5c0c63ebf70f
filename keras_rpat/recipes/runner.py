"""The runner: a recipe's run plan, one experiment after another, then the report."""

import json
import warnings
from pathlib import Path

import keras

from keras_rpat import _checks
from keras_rpat import _io
from keras_rpat.callbacks import DivergenceError
from keras_rpat.recipes.experiment import default_echo
from keras_rpat.recipes.experiment import describe_diff
from keras_rpat.recipes.experiment import preflight
from keras_rpat.recipes.experiment import run_experiment
from keras_rpat.recipes.report import write_report
from keras_rpat.recipes.schema import RecipeError
from keras_rpat.recipes.plan import load_recipe

__all__ = ["check_out_dir", "run_recipe", "run_single"]


def check_out_dir(out_dir, fingerprint, overwrite=False):
    """Refuses an output folder that holds results of another configuration.

    The folder's `config.json` records the configuration (recipe, a hash of
    its configuration, epochs, batch size, smoke mode). A different one is
    refused unless `overwrite`, which records the new configuration (results
    of the old one are then ignored by the report and replaced when re-run).

    Raises:
        RecipeError: the folder belongs to another configuration.
    """
    out_dir = Path(out_dir)
    fingerprint = _io.jsonable(fingerprint)
    path = out_dir / "config.json"
    existing = _io.read_json(path)
    if path.exists() and existing is None:
        if not overwrite:
            raise RecipeError(
                f"{path} is corrupt or truncated (not valid JSON). Delete it (the command rewrites it, and skips the "
                "finished runs of its configuration), pass --overwrite to start every run again, or use another --out."
            )
    elif existing is not None and existing != fingerprint:
        if not overwrite:
            raise RecipeError(
                f"{out_dir} holds results of a different configuration ({describe_diff(existing, fingerprint)}). "
                "Use another --out, or pass --overwrite to replace them."
            )
        warnings.warn(f"{out_dir}: replacing the configuration ({describe_diff(existing, fingerprint)}).", stacklevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(path, fingerprint)
    return path


def run_recipe(
    recipe,
    runs,
    out_dir,
    data_dir=None,
    overwrite=False,
    verbose=1,
    echo=None,
    checkpoint_every=None,
    tensorboard_dir=None,
):
    """Runs a recipe's plan and writes its report.

    `recipe`, `runs` and `out_dir` say what is run; the keyword arguments are
    the same independent switches as `run_experiment`'s.

    Args:
        recipe: a `Recipe` (or a name).
        runs: the `RunSpec`s to run (from `recipe.runs(...)`; all of one
            configuration).
        out_dir: output folder (each run in its own subfolder).
        data_dir: dataset folder (see `keras_rpat.datasets.load`).
        overwrite: accept an output folder of another configuration, and
            re-run the selected runs from scratch.
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        echo: callable for status lines.
        checkpoint_every: back the training state up every this many steps
            too (see `run_experiment`).
        tensorboard_dir: TensorBoard scalars of each run in
            `tensorboard_dir/<run_dir>`, side by side (see `run_experiment`).

    Returns:
        A dict with `results` (one per run) and `report` (paths written by
        `write_report`).
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    runs = list(runs)
    if not runs:
        raise RecipeError("The run plan is empty.")
    fingerprints = {json.dumps(r.fingerprint, sort_keys=True) for r in runs}
    if len(fingerprints) != 1 or runs[0].recipe != recipe.name:
        raise RecipeError("All runs must come from one `recipe.runs(...)` call of this recipe.")
    echo = echo or default_echo(verbose)
    _checks.check_writable_dir(out_dir, "out_dir")
    preflight(runs, data_dir)
    with _io.RunLock(out_dir):
        check_out_dir(out_dir, runs[0].fingerprint, overwrite)
        cache = {}
        results = []
        for i, spec in enumerate(runs, 1):
            if i > 1:
                keras.backend.clear_session()  # free the previous run's models and graphs
            echo(f"[{i}/{len(runs)}] {spec.describe()} -> {Path(out_dir) / spec.run_dir}")
            try:
                result = run_experiment(
                    spec,
                    out_dir,
                    data_dir=data_dir,
                    verbose=verbose,
                    overwrite=overwrite,
                    replace_stale=True,
                    echo=echo,
                    dataset_cache=cache,
                    checkpoint_every=checkpoint_every,
                    tensorboard_dir=tensorboard_dir,
                )
            except DivergenceError as e:
                # The run is marked failed in its results.json; the plan goes on.
                echo(f"FAILED {spec.describe()}: {e}")
                result = _io.read_json(Path(out_dir) / spec.run_dir / "results.json") or {"failed": str(e)}
            results.append(result)
            # Datasets are kept while later runs need them.
            needed = {r.dataset for r in runs[i:]}
            for key in [k for k in cache if k[0] not in needed and k[0] != "synthetic"]:
                del cache[key]
        report = write_report(recipe, out_dir, fingerprint=runs[0].fingerprint)
    failed = [r for r in results if r.get("failed")]
    if failed:
        echo(f"{len(failed)} of {len(results)} run(s) failed (diverged); see their results.json and {report}")
    return {"results": results, "report": report, "failed": [r.get("failed") for r in failed]}


def run_single(
    spec, out_dir, data_dir=None, overwrite=False, verbose=1, echo=None, checkpoint_every=None, tensorboard_dir=None
):
    """Runs one `RunSpec` outside a recipe (from `single_run`) in its own folder.

    Checks the dataset is there, records the run's configuration in
    `<out_dir>/config.json` (refusing a folder of another configuration unless
    `overwrite`) and runs `run_experiment`.

    Returns:
        The results dict of `run_experiment`.
    """
    _checks.check_writable_dir(out_dir, "out_dir")
    preflight([spec], data_dir)
    with _io.RunLock(out_dir):
        check_out_dir(out_dir, spec.run_fingerprint(), overwrite=overwrite)
        return run_experiment(
            spec,
            out_dir,
            data_dir=data_dir,
            verbose=verbose,
            overwrite=overwrite,
            echo=echo,
            checkpoint_every=checkpoint_every,
            tensorboard_dir=tensorboard_dir,
        )
