"""`keras-rpat train`: one run (a method on a dataset), outside a recipe.

```
keras-rpat train --method trades+rpat --dataset cifar10 --arch resnet18_bottleneck \\
    --norm linf --epochs 110 --seed 0 --out runs/x
```

The command builds its run with `keras_rpat.recipes.single_run` and runs it
with `keras_rpat.recipes.run_single` (`run_experiment` in a folder of its
own), exactly as a recipe runs each of its runs.
"""

import os

import click

from keras_rpat import _io
from keras_rpat import method_presets
from keras_rpat import recipes
from keras_rpat.cli import launch as launch_lib
from keras_rpat.cli import options as opt

__all__ = ["train_command"]


def _preset(ctx, param, value):
    try:
        return method_presets.canonical_preset_name(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _methods_help():
    """`--method`'s help: every preset of `keras_rpat.method_presets`."""
    return "A preset: " + ", ".join(method_presets.list_presets()) + " (aliases such as pgd and rpat++ work)."


def _for(option):
    """The methods of a run option, for its help (`"cutmix"` -> `"rebat, rpat_plus_plus"`)."""
    return ", ".join(method_presets.methods_with_option(option))


# The method options of a recipe, as flags (see `keras_rpat.recipes.single_run`). Each help names the
# methods whose row in `keras_rpat.method_presets` accepts the option.
_METHOD_OPTIONS = [
    click.option("--cutmix", is_flag=True, help=f"CutMix ({_for('cutmix')}; Table 4 '*')."),
    click.option(
        "--stronger-attack",
        is_flag=True,
        help=f"Table 6 '$': epsilon 10/255, 12 steps from epoch 100 ({_for('stronger_attack')}; linf).",
    ),
    click.option("--lr-factor", type=float, default=None, help=f"Piecewise LR divisor ({_for('lr_factor')}; 1.5)."),
    click.option(
        "--beta",
        type=float,
        default=None,
        help=f"Weight of the TRADES / MART (6.0) or BoAT / RPAT++ (1.0) term ({_for('beta')}).",
    ),
    click.option(
        "--proxy",
        type=click.Choice(list(method_presets.OPTION_TYPES["proxy"])),
        default=None,
        help="RPAT perception proxy (Table 5).",
    ),
    click.option(
        "--distance",
        type=click.Choice(list(method_presets.OPTION_TYPES["distance"])),
        default=None,
        help="RPAT regulariser (Figure 4a).",
    ),
    click.option(
        "--alpha",
        type=float,
        default=None,
        help="RPAT interpolation weight on the perturbation (paper convention, 0.5).",
    ),
    click.option(
        "--alpha-sampling",
        type=click.Choice(list(method_presets.OPTION_TYPES["alpha_sampling"])),
        default=None,
        help="Figure 4b's Beta-/Beta+.",
    ),
    click.option(
        "--teacher-training",
        type=click.Choice(list(method_presets.OPTION_TYPES["teacher_training"])),
        default=None,
        help=f"BatchNorm mode of the WA teacher ({_for('teacher_training')}): inference (default), always "
        "training mode, or first_epoch: training mode in the first averaging epoch only, as the reference code.",
    ),
    click.option(
        "--awp-gamma",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Adversarial weight perturbation (Wu et al. 2020; any method): its size relative to each weight's "
        "norm (0.005 with TRADES, 0.01 with PGD-AT). Default: off.",
    ),
    click.option(
        "--awp-warmup",
        type=click.IntRange(min=0),
        default=None,
        help="The first epoch (0-based, of this run) with AWP; needs --awp-gamma. Default 0.",
    ),
    click.option(
        "--learning-rate",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="SGD's learning rate, the peak of --lr-schedule cosine (any method; 0.2 in Wang et al. 2023). Default 0.1.",
    ),
    click.option(
        "--l2-step-size",
        type=opt.FRACTION,
        default=None,
        help="L2 attack step (default 32/255; 15/255 is the upstream convention).",
    ),
]
# The leaderboard's training ingredients (`method_presets.INGREDIENT_OPTIONS`; every method takes them;
# docs/guides/leaderboard.md).
_INGREDIENT_OPTIONS = [
    click.option(
        "--label-smoothing",
        type=click.FloatRange(0, 1, max_open=True),
        default=None,
        help="Label smoothing of every cross-entropy term (0.1 in Wang et al. 2023). Default: none.",
    ),
    click.option(
        "--lr-schedule",
        type=click.Choice(list(method_presets.OPTION_TYPES["lr_schedule"])),
        default=None,
        help="Learning-rate schedule; cosine: cosine decay after a 2.5% warm-up, per epoch (Wang et al. 2023). "
        "Default: the preset's.",
    ),
    click.option("--nesterov", is_flag=True, help="Nesterov momentum (torch.optim.SGD(nesterov=True))."),
    click.option(
        "--weight-decay-exclude",
        type=click.Choice(list(method_presets.OPTION_TYPES["weight_decay_exclude"])),
        default=None,
        help="No weight decay on the BatchNorm scales and offsets (batchnorm, Wang et al. 2023), or on those "
        "and the biases (batchnorm_and_bias). Default: decay every variable.",
    ),
    click.option(
        "--ema",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        metavar="TAU",
        help="Evaluate an EMA of the weights with the dynamic decay min(TAU, (1+t)/(10+t)) after a 2.5% warm-up "
        "(0.995 in Wang et al. 2023); ReBAT / RPAT++ / WA: their teacher's decay. Default: none.",
    ),
]


def _method_options(f):
    return opt.apply(_METHOD_OPTIONS + _INGREDIENT_OPTIONS, f)


@click.command("train")
@click.option("--method", required=True, callback=_preset, help=_methods_help())
@opt.dataset_option()
@click.option(
    "--arch",
    callback=opt.canonical_arch,
    default=None,
    help="Architecture (aliases work). Default: the preset's (Bench ResNet-18 / PreActResNet-18).",
)
@opt.norm_option()
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Default: the preset's (110 Bench, 200 ReBAT/RPAT++); shorter runs scale the schedule.",
)
@opt.seed_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default 128 (32 with --smoke).")
@click.option(
    "--out",
    type=opt.OUT_DIR,
    default=None,
    help="Run folder. Default: runs/train/<method>-<dataset>-<arch>-<norm>-seed<seed> "
    "(with --smoke: <method>-smoke-small_cnn-synthetic-<norm>-for-<dataset>-<arch>-seed<seed>).",
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the datasets are.")
@click.option(
    "--eval-attacks",
    type=opt.EVALUATIONS,
    default="clean,pgd20,autoattack",
    show_default=True,
    help="Evaluations of the checkpoints.",
)
@click.option(
    "--checkpoints",
    type=opt.CommaList(choices=["best", "final"]),
    default="best,final",
    show_default=True,
    help="Checkpoints to evaluate.",
)
@_method_options
@opt.generated_data_options()
@click.option("--smoke", is_flag=True, help="Tiny synthetic data, tiny CNN, 1 epoch: checks the pipeline in seconds.")
@click.option(
    "--overwrite", is_flag=True, help="Replace a run folder of another configuration (and re-run from scratch)."
)
@launch_lib.data_parallel_options()
@opt.checkpoint_every_option()
@opt.tensorboard_option()
@opt.verbose_level_option()
def train_command(out, data_dir, overwrite, verbose, sync_batchnorm, checkpoint_every, tensorboard, **run):
    """Train and evaluate one model (one run of a recipe).

    Trains METHOD on DATASET with the paper's settings, keeps the best and
    final checkpoints, evaluates both (clean, PGD-20, AutoAttack) and writes
    results.json in --out. Re-running the same command resumes an interrupted
    run; a finished one is skipped.

    Example: keras-rpat train --method trades+rpat --dataset cifar10
    --arch resnet18_bottleneck --norm linf --epochs 110 --seed 0 --out runs/x

    Data-parallel: torchrun --nproc_per_node=8 -m keras_rpat.cli train ... (see docs/guides/multi-device.md).
    """
    if run["l2_step_size"] is not None and run["norm"] != "l2":
        raise click.BadParameter(
            f"the L2 attack step applies to --norm l2 only, but --norm is {run['norm']}. Received: "
            f"--l2-step-size {run['l2_step_size']:g}; add --norm l2, or drop --l2-step-size.",
            param_hint="'--l2-step-size'",
        )
    try:
        spec = recipes.single_run(**run)
    except recipes.RecipeError as e:
        raise click.UsageError(opt.command_line_message(e)) from None
    cell = recipes.run_cell(os.path.basename(spec.dataset), spec.arch, spec.norm, spec.smoke)  # what runs
    out = out or os.path.join("runs", "train", f"{spec.method}-{cell}-seed{spec.seed}")
    launch = launch_lib.join(
        out, sync_batchnorm, {"spec": spec.to_dict(), "out": out, "overwrite": overwrite}, spec.batch_size
    )
    launch.echo(opt.backend_line())
    launch.echo(f"{spec.describe()} -> {out}" + (f" ({launch.world_size} ranks)" if launch.world_size > 1 else ""))
    try:
        result = recipes.run_single(
            spec,
            launch.out,
            data_dir=data_dir,
            overwrite=overwrite,
            verbose=verbose if launch.primary else 0,
            echo=launch.echo,
            checkpoint_every=checkpoint_every,
            tensorboard_dir=tensorboard if launch.primary else None,  # rank 0 writes
        )
    except (recipes.RecipeError, FileNotFoundError, ImportError, _io.RunLockedError, _io.WriteError) as e:
        raise click.ClickException(str(e)) from None
    launch.finish()
    launch.echo(f"Wrote {os.path.join(out, 'results.json')}" + (" (already complete)" if result.get("skipped") else ""))
