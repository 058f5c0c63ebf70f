"""`keras-rpat eval` and `keras-rpat autoattack` (registered by `keras_rpat.cli`).

```
keras-rpat eval MODEL.keras --data cifar10 --attacks clean,pgd20,autoattack \\
    --norm linf --epsilon 8/255 --out result.json
keras-rpat autoattack MODEL.keras --data cifar10 --n 1000 \\
    --attacks apgd-ce,apgd-t --state aa_state.json --out aa.json
```

`MODEL.keras` is a classifier saved with `model.save()` or a saved
`RPATTrainer` (its `evaluation_model` is evaluated: the weight-averaged model
for ReBAT / RPAT++). `DATA` is a dataset name of `keras_rpat.datasets.load`
or an `.npz` file; the test split is used.
"""

import json
import os
import zipfile

import click
import numpy as np

__all__ = ["autoattack_command", "eval_command", "threat_model_options"]

_DEFAULT_EPSILON = {"linf": "8/255", "l2": "128/255"}


# ---------------------------------------------------------------------------
# Option bundles and parsing
# ---------------------------------------------------------------------------


def _fraction(ctx, param, value):
    if value is None:
        return None
    from keras_rpat.attacks import parse_epsilon

    try:
        number = parse_epsilon(value, name=param.name)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    if not number > 0:
        raise click.BadParameter(f"must be > 0 (a pixel fraction such as 8/255). Received: {value}", ctx=ctx, param=param)
    return number


def threat_model_options(f):
    """`--norm`, `--epsilon` (default 8/255 L-inf, 128/255 L2)."""
    f = click.option(
        "--epsilon",
        callback=_fraction,
        default=None,
        help="Budget as a fraction of the pixel range, e.g. 8/255. Default: 8/255 (linf), 128/255 (l2).",
    )(f)
    f = click.option(
        "--norm",
        type=click.Choice(["linf", "l2"], case_sensitive=False),
        default="linf",
        show_default=True,
        help="Threat model.",
    )(f)
    return f


def _data_options(f):
    f = click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON here.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the attacks.")(f)
    f = click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Evaluate on N evenly strided test images.")(f)
    f = click.option(
        "--data",
        required=True,
        help="Dataset name (cifar10, cifar100, tiny_imagenet, synthetic) or a path to an .npz file; the test split is used.",
    )(f)
    f = click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))(f)
    return f


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
    return options or None


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _load_model(path):
    import keras

    import keras_rpat.layers  # noqa: F401  (register keras_rpat classes)
    import keras_rpat.models  # noqa: F401
    import keras_rpat.trainer  # noqa: F401
    from keras_rpat import evaluation

    expected = "Expected a .keras file written by model.save() (a classifier or a keras_rpat.RPATTrainer)."
    if not zipfile.is_zipfile(path):
        raise click.ClickException(
            f"Could not load the model file {path}: it is not a .keras archive (a zip file); "
            f"it may be corrupt or truncated. {expected}"
        )
    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise click.ClickException(
            f"Could not load the model file {path}: {type(e).__name__}: {message[:300].rstrip('.')}. {expected}"
        ) from None
    model = evaluation._resolve_model(loaded)
    if not isinstance(model, keras.Model):
        raise click.ClickException(f"{path} does not hold a Keras model (found {type(model).__name__}).")
    note = None
    if model is not loaded:
        note = "weight-averaged model" if model is getattr(loaded, "teacher", None) else "trainer's classifier"
    return model, note


def _load_test_data(name, model, n):
    from keras_rpat import datasets
    from keras_rpat import evaluation

    try:
        dataset = datasets.load(name)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise click.BadParameter(str(e), param_hint="'--data'") from None
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    model_classes = evaluation._model_num_classes(model)
    is_npz = os.fspath(name).lower().endswith(".npz")
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
        idx = evaluation._strided_indices(len(x), n)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--n'") from None
    if idx is not None:
        x, y = x[idx], y[idx]
    x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
    if evaluation.infer_data_format(model) == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, y, dataset


def _run(model_path, data, n, out, attacks, norm, epsilon, step_size, num_steps, batch_size, seed, aa_version, aa_attacks, aa_batch_size, aa_state, aa_options, verbose):
    from keras_rpat import evaluation

    if epsilon is None:
        epsilon = _fraction(None, click.Option(["--epsilon"]), _DEFAULT_EPSILON[norm.lower()])
    try:
        from keras_rpat.cli import backend_line
    except ImportError:  # pragma: no cover - cli.py is optional here
        pass
    else:
        click.echo(backend_line())
    model, note = _load_model(model_path)
    x, y, dataset = _load_test_data(data, model, n)
    click.echo(
        f"Evaluating {os.path.basename(model_path)}"
        + (f" ({note})" if note else "")
        + f" on {dataset.name} test ({len(x)} images), {norm.lower()} eps={epsilon * 255:.4g}/255: {', '.join(attacks)}"
    )
    try:
        result = evaluation.evaluate(
            model,
            x,
            y,
            attacks=attacks,
            norm=norm,
            epsilon=epsilon,
            step_size=step_size,
            num_steps=num_steps,
            batch_size=batch_size,
            seed=seed,
            aa_version=aa_version,
            aa_attacks=aa_attacks,
            aa_batch_size=aa_batch_size,
            aa_state_path=aa_state,
            aa_options=aa_options,
            verbose=verbose,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    result.provenance["model"] = os.path.abspath(model_path)
    result.provenance["data"] = data
    click.echo(result.summary())
    if out is not None:
        result.save(out)
        click.echo(f"Wrote {out}")
    return result


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@click.command("eval")
@_data_options
@threat_model_options
@click.option(
    "--attacks",
    default="clean,pgd20",
    show_default=True,
    help="Comma-separated: clean, pgd20, autoattack.",
)
@click.option("--step-size", callback=_fraction, default=None, help="PGD step, e.g. 2/255. Default: epsilon/4.")
@click.option("--num-steps", type=click.IntRange(min=1), default=20, show_default=True, help="PGD steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--aa-state", type=click.Path(dir_okay=False), default=None, help="AutoAttack state file (resumable).")
@click.option("--verbose", is_flag=True, help="Print AutoAttack's progress.")
def eval_command(model_path, data, n, seed, out, norm, epsilon, attacks, step_size, num_steps, batch_size, aa_state, verbose):
    """Clean, PGD-20 and AutoAttack accuracy of a saved model, with Mean and NRR."""
    from keras_rpat import evaluation

    try:
        names = evaluation._normalise_attacks(attacks)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--attacks'") from None
    _run(model_path, data, n, out, names, norm, epsilon, step_size, num_steps, batch_size, seed, "standard", None, 250, aa_state, None, verbose)


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
    type=click.Choice(["standard", "plus", "rand", "custom"]),
    default=None,
    help="AutoAttack version. Default: standard, or custom when --attacks differs from it.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--state", type=click.Path(dir_okay=False), default=None, help="State file: rerun with it to resume.")
@click.option(
    "--option",
    "aa_options",
    multiple=True,
    callback=_parse_aa_options,
    help="Attack setting COMPONENT.SETTING=VALUE (e.g. apgd.n_iter=10, square.n_queries=1000); repeatable.",
)
@click.option("--verbose", is_flag=True, help="Print AutoAttack's progress.")
def autoattack_command(model_path, data, n, seed, out, norm, epsilon, attacks, version, batch_size, state, aa_options, verbose):
    """AutoAttack robust accuracy of a saved model (resumable with --state)."""
    from keras_rpat import autoattack_bridge

    try:
        if version is None:
            version = "standard"
            if attacks is not None and autoattack_bridge.resolve_attacks("custom", attacks) != autoattack_bridge.resolve_attacks("standard"):
                version = "custom"
        aa_attacks = autoattack_bridge.resolve_attacks(version, attacks)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--attacks'") from None
    _run(
        model_path,
        data,
        n,
        out,
        ["clean", "autoattack"],
        norm,
        epsilon,
        None,
        20,
        batch_size,
        seed,
        version,
        aa_attacks if version == "custom" else None,
        batch_size,
        state,
        aa_options,
        verbose,
    )
