"""The command line's vocabulary: one Click type or option per concept, defined once.

| concept | type / option | accepts |
|---|---|---|
| norm | `NORM` / `norm_option` | `linf`, `l2` and their aliases (`l_inf`, `Linf`, `2`...) |
| pixel budget | `FRACTION` / `epsilon_option` | `8/255`, `0.031` |
| dataset | `DATASET` / `dataset_option` | `cifar10` (any spelling: `CIFAR-10`), `cifar100`, `tiny_imagenet`, `synthetic`, an `.npz` file |
| comma list | `CommaList(item)` | `a,b` and repeated options |
| seeds | `SEEDS` / `seed_option` | `0,1,2` / one seed >= 0 |
| evaluations | `EVALUATIONS` | `clean,pgd20,autoattack` (`pgd`, `aa` work) |
| AutoAttack state | `state_option` | a JSON file; rerun with it to resume |
| output folder / file | `OUT_DIR` / `OUT_FILE` | a path that is writable (checked before any work) |
"""

import os

import click

from keras_rpat import _checks
from keras_rpat import _names
from keras_rpat import recipes
from keras_rpat._version import __version__

__all__ = [
    "DATASET",
    "EVALUATIONS",
    "FRACTION",
    "NORM",
    "OUT_DIR",
    "OUT_FILE",
    "SEEDS",
    "CommaList",
    "backend_line",
    "dataset_option",
    "epsilon_option",
    "norm_option",
    "seed_option",
    "state_option",
]


def backend_line(load=True):
    """`keras_rpat 0.1.0, keras 3.x, backend: torch, device: cpu` for the start of every command.

    Called when a command starts its work: it loads Keras and the backend (the options parse without them).
    `load=False` (a plan, where nothing runs) names the backend of `KERAS_BACKEND` without loading it.
    """
    if not load:
        return (
            f"keras_rpat {__version__}, backend: {os.environ.get('KERAS_BACKEND', 'torch')} (not loaded: nothing runs)"
        )
    import keras

    from keras_rpat.backend import device_name

    return (
        f"keras_rpat {__version__}, keras {keras.__version__}, "
        f"backend: {keras.config.backend()}, device: {device_name()}"
    )


def command_line_message(error):
    """The message of a package check, with its Python advice for large L2 budgets as the command line's flag."""
    head, advice, _ = str(error).partition(" To use it as given, call keras_rpat.attacks.allow_large_l2_budgets()")
    return head + (" To use it as given, rerun as keras-rpat --allow-large-l2 ..." if advice else "")


# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------


def canonical_arch(ctx, param, value):
    """Click callback: a model name or alias -> its canonical name (`None` stays `None`)."""
    if value is None:
        return None
    try:
        return _names.canonical_model_name(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


class NormType(click.ParamType):
    """A threat model: `linf` or `l2` (aliases such as `l_inf`, `Linf`, `2` work)."""

    name = "norm"

    def convert(self, value, param, ctx):
        try:
            return _checks.canonical_norm(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)

    def get_metavar(self, param, ctx=None):
        return "[linf|l2]"


class FractionType(click.ParamType):
    """A pixel fraction > 0 such as `8/255` or `0.031`."""

    name = "fraction"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        name = param.name if param is not None else "value"
        try:
            number = _checks.parse_epsilon(value, name=name)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if not (number > 0 and number != float("inf")):
            self.fail(f"must be > 0 and finite (a pixel fraction such as 8/255). Received: {value}", param, ctx)
        return number


class OutputPathType(click.ParamType):
    """An output folder (`folder=True`) or file that can be written; checked before any work starts."""

    def __init__(self, folder):
        self.folder = folder
        self.name = "folder" if folder else "file"

    def convert(self, value, param, ctx):
        name = param.opts[0] if param is not None and param.opts else "out"
        check = _checks.check_writable_dir if self.folder else _checks.check_writable_file
        try:
            check(value, name=name)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return value


class DatasetType(click.ParamType):
    """A dataset name of `keras_rpat.datasets.load` (any spelling) or a path to an `.npz` file."""

    name = "dataset"

    def convert(self, value, param, ctx):
        if str(value).lower().endswith(".npz"):
            return str(value)
        key = _checks.canonical_dataset(value).replace("-", "_")
        valid = sorted(_names.DATASETS)
        if key not in valid:
            self.fail(f"Unknown dataset {value!r}. Valid: {', '.join(valid)}, or a path to an .npz file.", param, ctx)
        return key


class CommaList(click.ParamType):
    """Comma-separated values (`a,b`), each converted by `item`; repeated options add up."""

    name = "list"

    def __init__(self, item=click.STRING, choices=None):
        self.item = item
        self.choices = choices

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        items = [self.item.convert(v, param, ctx) for v in _checks.split_list(value)]
        bad = [v for v in items if self.choices is not None and v not in self.choices]
        if bad or not items:
            self.fail(
                f"{value!r} is not valid. Valid: {', '.join(self.choices or ['a comma-separated list'])}.", param, ctx
            )
        return list(dict.fromkeys(items))


class SeedsType(click.ParamType):
    """Comma-separated seeds >= 0, e.g. `0,1,2`."""

    name = "seeds"

    def convert(self, value, param, ctx):
        try:
            seeds = recipes.parse_seeds(value)
        except recipes.RecipeError as e:
            self.fail(str(e), param, ctx)
        if not seeds:
            self.fail("give at least one seed, e.g. 0,1,2", param, ctx)
        if min(seeds) < 0:
            self.fail(f"seeds must be integers >= 0, e.g. 0,1,2. Received: {value}", param, ctx)
        if len(set(seeds)) != len(seeds):
            self.fail(f"each seed once, e.g. 0,1,2. Received: {value}", param, ctx)
        return seeds


class EvaluationsType(click.ParamType):
    """Comma-separated evaluations: `clean`, `pgd20`, `autoattack` (aliases `pgd`, `aa`)."""

    name = "evaluations"

    def convert(self, value, param, ctx):
        try:
            return tuple(_names.parse_attacks(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


NORM = NormType()
FRACTION = FractionType()
DATASET = DatasetType()
SEEDS = SeedsType()
EVALUATIONS = EvaluationsType()
OUT_DIR = OutputPathType(folder=True)
OUT_FILE = OutputPathType(folder=False)


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def norm_option(default="linf", help="Threat model: linf (L-inf, 8/255) or l2 (128/255)."):
    """`--norm` (one threat model)."""
    return click.option("--norm", type=NORM, default=default, show_default=default is not None, help=help)


def epsilon_option(help="Budget as a fraction of the pixel range, e.g. 8/255. Default: 8/255 (linf), 128/255 (l2)."):
    """`--epsilon` (a pixel fraction; default: the norm's budget)."""
    return click.option("--epsilon", type=FRACTION, default=None, help=help)


def dataset_option(required=True, help="cifar10, cifar100, tiny_imagenet, synthetic, or a path to an .npz file."):
    """`--dataset` (one dataset)."""
    return click.option("--dataset", type=DATASET, required=required, help=help)


def seed_option(help="Seed."):
    """`--seed` (one seed >= 0)."""
    return click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help=help)


def state_option():
    """`--state` (AutoAttack's resumable state file)."""
    return click.option("--state", type=OUT_FILE, default=None, help="AutoAttack state file: rerun with it to resume.")


def verbose_level_option():
    """`--verbose 0|1|2` of the training commands, and `--quiet` (the same as `--verbose 0`)."""
    quiet = click.option(
        "--quiet",
        "-q",
        is_flag=True,
        is_eager=True,  # parsed before --verbose, whose callback reads it
        expose_value=False,
        callback=lambda ctx, param, value: ctx.meta.__setitem__("keras_rpat.quiet", value),
        help="Print nothing but errors (--verbose 0, and no plan or summary lines).",
    )
    verbose = click.option(
        "--verbose",
        type=click.IntRange(0, 2),
        default=1,
        show_default=True,
        callback=_verbose_level,
        help="0 silent, 1 progress bars on a terminal (one line per epoch otherwise), 2 one line per epoch.",
    )
    return lambda f: quiet(verbose(f))


def _verbose_level(ctx, param, value):
    """`--verbose`, 0 under `--quiet`; `--quiet` with `--verbose 1|2` is a contradiction, not a choice."""
    if not ctx.meta.get("keras_rpat.quiet"):
        return value
    if value and ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT:
        raise click.BadParameter(
            f"--quiet prints nothing, --verbose {value} prints progress. Received both: give one of them.",
            ctx=ctx,
            param=param,
        )
    return 0


def echo():
    """`click.echo`, or a no-op under `--quiet` (see `verbose_level_option`)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("keras_rpat.quiet"):
        return lambda *args, **kwargs: None
    return click.echo


def checkpoint_every_option():
    """`--checkpoint-every N` of the training commands (mid-epoch backups)."""
    return click.option(
        "--checkpoint-every",
        type=click.IntRange(min=1),
        default=None,
        help="Also back the training state up every N steps (batches), so a kill loses at most N steps "
        "instead of the running epoch. Does not change the results.",
    )


def tensorboard_option():
    """`--tensorboard DIR` of the training commands (TensorBoard scalars per epoch)."""
    return click.option(
        "--tensorboard",
        type=OUT_DIR,
        default=None,
        help="Also write TensorBoard scalars per epoch (loss terms, clean and robust accuracy, learning rate) into "
        "FOLDER (a recipe: FOLDER/<run folder> per run). View with `tensorboard --logdir FOLDER`. Does not change "
        "the results.",
    )


def generated_data_options():
    """`--generated-data FILE` and `--generated-fraction F`: generated images mixed into every training batch."""
    data = click.option(
        "--generated-data",
        type=click.Path(dir_okay=False),
        default=None,
        help="An uncompressed .npz of generated images (`image` uint8 N x H x W x C, `label`), memory-mapped and "
        "mixed into every training batch, e.g. the EDM sets of Wang et al. 2023 (docs/guides/data.md#generated). "
        "A relative path is also looked up in --data-dir.",
    )
    fraction = click.option(
        "--generated-fraction",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        help="Share of each batch taken from --generated-data. Default 0.7 (Wang et al. 2023's --unsup-fraction).",
    )
    return lambda f: data(fraction(f))


def apply(options, f):
    """Applies a list of Click decorators so that they show in list order in `--help`."""
    for option in reversed(options):
        f = option(f)
    return f
