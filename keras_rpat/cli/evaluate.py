"""`keras-rpat eval` and `keras-rpat autoattack`.

```
keras-rpat eval MODEL.keras --dataset cifar10 --attacks clean,pgd20,autoattack \\
    --norm linf --epsilon 8/255 --out result.json
keras-rpat eval MODEL.keras --dataset cifar10 --attacks clean,cw20,pgd20x5,autoattack \\
    --state eval_state.json --robustbench-json model_info.json
keras-rpat autoattack MODEL.keras --dataset cifar10 --n 1000 \\
    --attacks apgd-ce,apgd-t --state aa_state.json --out aa.json
```

Under `torchrun` (or `--strategy` on tensorflow) the ranks split the evaluation and
rank 0 prints and writes `--out` (`keras_rpat.cli.launch.join_evaluation`).

`MODEL.keras` is a classifier saved with `model.save()` or a saved
`RPATTrainer` (its `evaluation_model` is evaluated: the weight-averaged model
for ReBAT / RPAT++). The dataset is a name of `keras_rpat.datasets.load` or an
`.npz` file; the test split is used.
"""

import contextlib
import json
import os
import tempfile
import warnings
import zipfile

import click
import numpy as np

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import _names
from keras_rpat import _resume
from keras_rpat import method_presets
from keras_rpat.cli import launch as launch_lib
from keras_rpat.cli import options as opt

__all__ = ["autoattack_command", "eval_command", "load_model", "threat_model_options", "unsafe_deserialization_option"]

# The default budget of each threat model (the paper's).
DEFAULT_EPSILON = {norm: budget["epsilon"] for norm, budget in method_presets.BUDGETS.items()}


def threat_model_options(f):
    """`--norm`, `--epsilon` (default 8/255 L-inf, 128/255 L2)."""
    return opt.apply([opt.norm_option(help="Threat model."), opt.epsilon_option()], f)


def _data_options(f):
    """MODEL, `--dataset`, `--n`, `--seed`, `--out`, `--unsafe-deserialization`: what every evaluation command
    reads and writes."""
    return opt.apply(
        [
            click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False)),
            opt.dataset_option(
                help="Dataset name (cifar10, cifar100, tiny_imagenet, synthetic) or a path to an .npz file; the test split is used."
            ),
            click.option(
                "--n", "n", type=click.IntRange(min=1), default=None, help="Evaluate on N evenly strided test images."
            ),
            opt.seed_option(help="Seed of the attacks."),
            click.option("--out", type=opt.OUT_FILE, default=None, help="Write the result as JSON here."),
            unsafe_deserialization_option(),
        ],
        f,
    )


def _parse_aa_options(ctx, param, values):
    options = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        component, dot, attr = key.partition(".")
        if not sep or not dot or not component or not attr:
            raise click.BadParameter(
                f"expected COMPONENT.SETTING=VALUE such as apgd.n_iter=10. Received: {item!r}",
                ctx=ctx,
                param=param,
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(component, {})[attr] = value
    if not options:
        return None
    from keras_rpat import autoattack  # imports Keras; only when --option is given

    try:
        autoattack.check_options(options)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return options or None


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_model(path, unsafe_deserialization=False):
    """`(model to evaluate, note)` from a `.keras` file: a classifier, or a saved `RPATTrainer`'s
    `evaluation_model` (the note says which). Every way the file can be wrong is one `ClickException`."""
    # Keras, and the keras_rpat classes a .keras file may hold, load when a model is read (not for an option error).
    import keras

    import keras_rpat.layers  # noqa: F401  (registers keras_rpat classes for loading)
    import keras_rpat.models  # noqa: F401
    import keras_rpat.trainer  # noqa: F401

    expected = "Expected a .keras file written by model.save() (a classifier or a keras_rpat.RPATTrainer)."
    problem = _not_a_keras_archive(path)
    if problem:
        raise click.ClickException(f"Could not load the model file {path}: {problem}. {expected}")
    try:
        with _keras_named(path) as keras_path:
            loaded = keras.saving.load_model(keras_path, compile=False, safe_mode=not unsafe_deserialization)
    except Exception as e:
        message = " ".join(str(e).split())
        if "safe_mode" in message:  # Keras' advice names its own function's argument
            message = (
                "it holds a Lambda layer whose function is Python code, which Keras does not load from a file by "
                "default (loading would run that code). If you trust the file, rerun with --unsafe-deserialization "
                "(Keras' safe_mode=False)"
            )
        else:
            message = f"{type(e).__name__}: {_shortened(message, 300)}"
        raise click.ClickException(f"Could not load the model file {path}: {message}. {expected}") from None
    model = _data_checks.evaluation_model(loaded)
    if not isinstance(model, keras.Model):
        raise click.ClickException(f"{path} does not hold a Keras model (found {type(model).__name__}).")
    note = None
    if model is not loaded:
        note = "weight-averaged model" if model is getattr(loaded, "teacher", None) else "trainer's classifier"
    return model, note


def _not_a_keras_archive(path):
    """Why `path` is not a .keras archive (a zip with config.json), or None."""
    if not zipfile.is_zipfile(path):
        empty = os.path.getsize(path) == 0
        return (
            "the file is empty" if empty else "it is not a .keras archive (a zip file); it may be corrupt or truncated"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as e:
        return f"it is a corrupt or truncated zip file ({e})"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return (
            "it is a PyTorch checkpoint (torch.save), not a Keras model; convert it first with "
            f"keras-rpat convert {path} --arch ARCH --out model.keras"
        )
    if "config.json" not in names:
        kind = "a NumPy .npz archive" if names and all(n.endswith(".npy") for n in names) else "a zip file"
        return f"it is {kind} without the config.json of a .keras archive"
    return None


@contextlib.contextmanager
def _keras_named(path):
    """`path`, or a link to it named `model.keras` (Keras reads .keras archives by their file name only)."""
    if str(path).endswith(".keras"):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="keras_rpat_model.") as folder:
        link = os.path.join(folder, "model.keras")
        os.symlink(os.path.abspath(path), link)
        yield link


def _shortened(text, limit):
    """`text` cut at a word boundary before `limit` characters (with "..." when cut)."""
    if len(text) <= limit:
        return text.rstrip(".")
    return text[:limit].rsplit(" ", 1)[0].rstrip(".,;:") + " ..."


def unsafe_deserialization_option():
    """`--unsafe-deserialization` of the commands that load a .keras file."""
    return click.option(
        "--unsafe-deserialization",
        is_flag=True,
        help="Load a model whose Lambda layers hold Python code (Keras' safe_mode=False). Only for files you trust.",
    )


def _load_test_data(name, model, n):
    from keras_rpat import datasets  # imports Keras; loaded when a command runs

    try:
        dataset = datasets.load(name, **(_synthetic_like(model) if name == "synthetic" else {}))
    except (ValueError, FileNotFoundError, OSError) as e:
        raise click.BadParameter(str(e), param_hint="'--dataset'") from None
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    model_classes = _data_checks.model_num_classes(model)
    is_npz = os.fspath(name).lower().endswith(".npz")
    if model_classes is not None and is_npz:
        try:
            _data_checks.label_indices(dataset.y_test, model_classes, "y_test")
        except ValueError as e:
            raise click.ClickException(
                f"The model outputs {model_classes} classes (output shape (None, {model_classes})) but the dataset "
                f"{dataset.name!r} has {dataset.num_classes} classes. In {name}: {e}"
            ) from None
    if model_classes is not None and model_classes != dataset.num_classes:
        # An .npz's class count is inferred from its labels (a lower bound).
        if not (is_npz and model_classes > dataset.num_classes):
            raise click.ClickException(
                f"The model outputs {model_classes} classes (output shape (None, {model_classes})) "
                f"but the dataset {dataset.name!r} has {dataset.num_classes} classes (test labels "
                f"shape {tuple(dataset.y_test.shape)}). Evaluate the model on the dataset it was "
                "trained for."
            )
    x, y = dataset.x_test, dataset.y_test
    try:
        idx = _checks.strided_indices(len(x), n)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--n'") from None
    if idx is not None:
        x, y = x[idx], y[idx]
    x = _data_checks.to_float01(x)
    if _data_checks.infer_data_format(model) == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, y, dataset


def _synthetic_like(model):
    """The options of `datasets.load("synthetic")` that fit `model`: its image size and class count.

    The synthetic task is generated, so it is made at the size the model takes (16x16 for a smoke run's model).
    """
    options = {}
    shape = _data_checks.model_input_shape(model)
    if shape is not None and len(shape) == 4:
        first = _data_checks.infer_data_format(model) == "channels_first"
        height, width = shape[2:4] if first else shape[1:3]
        if height is not None and height == width:
            options["image_size"] = int(height)
    classes = _data_checks.model_num_classes(model)
    if classes:
        options["num_classes"] = classes
    return options


def _check_not_overwritten(model_path, dataset, outputs):
    """The files of `outputs` (`{option: path}`) are written: none may be an input of the command, nor another."""
    inputs = [("the MODEL", model_path)]
    if str(dataset).lower().endswith(".npz"):
        inputs.append(("the --dataset", dataset))
    for option, path in outputs.items():
        for what, other in inputs:
            if path is not None and other is not None and os.path.realpath(path) == os.path.realpath(other):
                raise click.BadParameter(
                    f"{path} is {what} file: writing {option} there would destroy it. Give {option} another file.",
                    param_hint=f"'{option}'",
                )
        inputs.append((f"the {option}", path))


def _pgd_state_path(state, attacks):
    """The `pgd_state_path` of `--state STATE` (`STATE` is AutoAttack's): `<STATE without extension>.pgd.json`,
    when a PGD evaluation runs."""
    if state is None or not any(_names.pgd_evaluation(name) for name in attacks):
        return None
    root, ext = os.path.splitext(os.fspath(state))
    return f"{root}.pgd{ext or '.json'}"


def _evaluate_saved_model(
    model_path, dataset, n, out, unsafe_deserialization=False, robustbench_json=None, architecture=None, **settings
):
    """Loads MODEL and the test split, runs `keras_rpat.evaluation.evaluate(**settings)`, prints and saves.

    `settings` are `evaluate`'s own keyword arguments (`attacks`, `norm`,
    `epsilon`, ...), passed through unchanged. With `robustbench_json`, the
    result is also written there as a RobustBench record (`architecture`: its
    architecture; default: from the model's name).
    """
    from keras_rpat import evaluation  # imports Keras; loaded when a command runs

    if robustbench_json is not None and "autoattack" not in settings["attacks"]:
        raise click.BadParameter(
            "the RobustBench record holds the AutoAttack accuracy: add autoattack to --attacks "
            f"(e.g. --attacks clean,autoattack). Received: --attacks {','.join(settings['attacks'])}",
            param_hint="'--robustbench-json'",
        )
    if architecture is not None and robustbench_json is None:
        warnings.warn(f"--architecture {architecture} is only written by --robustbench-json, which is not given.")
    outputs = {"--out": out, "--state": settings.get("aa_state_path"), "--robustbench-json": robustbench_json}
    _check_not_overwritten(model_path, dataset, outputs)
    pgd_path = settings.get("pgd_state_path")
    pgd_names = [name for name in settings["attacks"] if pgd_path and _names.pgd_evaluation(name)]
    try:
        _resume.check_state_file(settings.get("aa_state_path"), _resume.AUTOATTACK)
        for name in pgd_names:
            _resume.check_state_file(evaluation.metrics.pgd_state_file(pgd_path, name), _resume.PGD)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--state'") from None
    if settings["epsilon"] is None:
        settings["epsilon"] = DEFAULT_EPSILON[settings["norm"]]
    for key in ("epsilon", "step_size"):
        try:
            if settings.get(key) is not None:
                _checks.check_budget(settings[key], key, settings["norm"])
        except ValueError as e:
            raise click.BadParameter(opt.command_line_message(e), param_hint=f"'--{key.replace('_', '-')}'") from None
    # Under torchrun (or --strategy) the ranks split the evaluation; rank 0 prints and writes.
    launch = launch_lib.join_evaluation(
        {"model": os.path.basename(model_path), "dataset": str(dataset), "n": n, **settings}
    )
    echo = click.echo if launch.primary else (lambda message: None)
    echo(opt.backend_line())
    model, note = load_model(model_path, unsafe_deserialization)
    x, y, data = _load_test_data(dataset, model, n)
    echo(
        f"Evaluating {os.path.basename(model_path)}"
        + (f" ({note})" if note else "")
        + f" on {data.name} test ({len(x)} images), {settings['norm']} eps={settings['epsilon'] * 255:.4g}/255: "
        + ", ".join(settings["attacks"])
        + (f" ({launch.world_size} ranks)" if launch.world_size > 1 else "")
    )
    for key in ("aa_state_path", "pgd_state_path"):  # one writer per file
        settings[key] = launch_lib.rank_file(settings.get(key), launch.rank)
    settings["verbose"] = settings.get("verbose", False) and launch.primary
    try:
        result = evaluation.evaluate(model, x, y, **settings)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    result.provenance["model"] = os.path.abspath(model_path)
    result.provenance["data"] = dataset
    echo(result.summary())
    if out is not None and launch.primary:
        result.save(out)
        echo(f"Wrote {out}")
    if robustbench_json is not None and launch.primary:
        architecture = architecture or evaluation.robustbench.architecture_name(model.name)
        evaluation.write_robustbench_json(robustbench_json, result, data.name, architecture, len(data.x_test))
        echo(f"Wrote {robustbench_json} (RobustBench model_info: fill in link, name, authors, venue, reported)")
    return result


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@click.command("eval")
@_data_options
@threat_model_options
@click.option(
    "--attacks",
    type=opt.EVALUATIONS,
    default="clean,pgd20",
    show_default=True,
    help="Comma-separated: clean, pgd20, autoattack; cwN (N-step PGD on the CW margin loss: cw20); pgdNxR, cwNxR "
    "(R random starts, the worst case per image: pgd20x5); pgdN.",
)
@click.option("--step-size", type=opt.FRACTION, default=None, help="PGD step, e.g. 2/255. Default: epsilon/4.")
@click.option(
    "--num-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps of every PGD evaluation. Default: the number in its name (pgd20, cw20, pgd20x5: 20).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=_names.EVAL_BATCH_SIZE, show_default=True)
@click.option(
    "--state",
    type=opt.OUT_FILE,
    default=None,
    help="State file: rerun with it to resume. AutoAttack keeps STATE, the PGD evaluations STATE.pgd.json "
    "(pgd20) and STATE.pgd.NAME.json (e.g. cw20) beside it (STATE without its extension).",
)
@click.option(
    "--robustbench-json",
    type=opt.OUT_FILE,
    default=None,
    help="Also write the result as a RobustBench model_info record (clean and AutoAttack accuracy, eps, "
    "architecture, threat model, number of images). Needs autoattack in --attacks.",
)
@click.option(
    "--architecture",
    default=None,
    help="The architecture named in --robustbench-json. Default: from the model's name (e.g. WideResNet-28-10).",
)
@click.option(
    "--verbose", is_flag=True, help="Print the progress of PGD (elapsed, ETA, accuracy so far) and AutoAttack."
)
@launch_lib.strategy_option()
def eval_command(
    model_path,
    dataset,
    n,
    seed,
    out,
    unsafe_deserialization,
    norm,
    epsilon,
    attacks,
    step_size,
    num_steps,
    batch_size,
    state,
    robustbench_json,
    architecture,
    verbose,
):
    """Clean, PGD-20 and AutoAttack accuracy of a saved model, with Mean and NRR."""
    _evaluate_saved_model(
        model_path,
        dataset,
        n,
        out,
        unsafe_deserialization,
        robustbench_json,
        architecture,
        attacks=list(attacks),
        norm=norm,
        epsilon=epsilon,
        step_size=step_size,
        num_steps=num_steps,
        batch_size=batch_size,
        seed=seed,
        aa_state_path=state,
        pgd_state_path=_pgd_state_path(state, attacks),
        verbose=verbose,
    )


@click.command("autoattack")
@_data_options
@threat_model_options
@click.option(
    "--attacks",
    default=None,
    help="Comma-separated AutoAttack attacks (apgd-ce, apgd-t, fab-t, square, apgd-dlr, fab). "
    "Default: the version's (standard: apgd-ce,apgd-t,fab-t,square).",
)
@click.option(
    "--version",
    "version",
    type=click.Choice(list(_names.AA_VERSIONS)),
    default=None,
    help="AutoAttack version. Default: standard, or custom when --attacks differs from it.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=_names.AA_BATCH_SIZE, show_default=True)
@opt.state_option()
@click.option(
    "--option",
    "aa_options",
    multiple=True,
    callback=_parse_aa_options,
    help="Attack setting COMPONENT.SETTING=VALUE (e.g. apgd.n_iter=10, square.n_queries=1000); repeatable.",
)
@click.option("--verbose", is_flag=True, help="Print AutoAttack's progress.")
@launch_lib.strategy_option()
def autoattack_command(
    model_path,
    dataset,
    n,
    seed,
    out,
    unsafe_deserialization,
    norm,
    epsilon,
    attacks,
    version,
    batch_size,
    state,
    aa_options,
    verbose,
):
    """AutoAttack robust accuracy of a saved model (resumable with --state)."""
    from keras_rpat import autoattack  # imports Keras; loaded when the command runs

    try:
        version = version or autoattack.default_version(attacks)
        aa_attacks = autoattack.resolve_attacks(version, attacks)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--attacks'") from None
    _evaluate_saved_model(
        model_path,
        dataset,
        n,
        out,
        unsafe_deserialization,
        attacks=["clean", "autoattack"],
        norm=norm,
        epsilon=epsilon,
        batch_size=batch_size,
        seed=seed,
        aa_version=version,
        aa_attacks=aa_attacks if version == "custom" else None,
        aa_batch_size=batch_size,
        aa_state_path=state,
        aa_options=aa_options,
        verbose=verbose,
    )
