"""`keras-rpat recipe ...`: one subcommand per paper artefact, plus `list` and `show`.

```
keras-rpat recipe list
keras-rpat recipe show table3
keras-rpat recipe table3 --arch preactresnet18 --dry-run
keras-rpat recipe table3 --arch preactresnet18             # 24 runs, 200 epochs each
keras-rpat recipe figure2 --smoke                           # seconds, synthetic data
```

One subcommand per recipe file (`recipes/*.toml`, see `keras_rpat.recipes`);
they share one set of options. Re-running a command after an interruption
resumes it: finished runs are skipped and an interrupted run continues from its
last completed epoch (or its last `--checkpoint-every` step backup).
"""

import os

import click

from keras_rpat import _io
from keras_rpat import recipes
from keras_rpat.cli import launch as launch_lib
from keras_rpat.cli import options as opt
from keras_rpat.recipes import cost

__all__ = ["recipe_group", "recipe_run_options"]


def recipe_run_options(f):
    """The options shared by every `keras-rpat recipe <name>` command.

    `--dataset`, `--arch`, `--norm` and `--method` narrow the recipe's plan
    (comma-separate or repeat them); the recipe checks each value against
    what it contains, so its errors list the recipe's own choices.
    """
    names = opt.CommaList()
    return opt.apply(
        [
            click.option(
                "--dataset",
                multiple=True,
                type=names,
                callback=_joined,
                help="Only these datasets (repeat or comma-separate), e.g. cifar10.",
            ),
            click.option(
                "--arch",
                multiple=True,
                type=names,
                callback=_joined,
                help="Only these architectures; aliases such as preactresnet18 work.",
            ),
            click.option(
                "--norm",
                multiple=True,
                type=opt.CommaList(opt.NORM),
                callback=_joined,
                help="Only these threat models: linf, l2.",
            ),
            click.option(
                "--method",
                multiple=True,
                type=names,
                callback=_joined,
                help="Only these methods: a method id, the paper's label or a preset name.",
            ),
            click.option(
                "--seeds",
                type=opt.SEEDS,
                default=None,
                help="Comma-separated seeds. Default: the recipe's (0,1,2); 0 with --smoke.",
            ),
            click.option(
                "--epochs",
                type=click.IntRange(min=1),
                default=None,
                help="Train this many epochs instead of the paper's (LR milestones and start epochs scale).",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=None,
                help="Training batch size. Default: the recipe's (128).",
            ),
            click.option(
                "--data-dir",
                type=click.Path(file_okay=False),
                default=None,
                help="Where the datasets are (Tiny-ImageNet must be unpacked there).",
            ),
            click.option(
                "--out",
                type=opt.OUT_DIR,
                default=None,
                help="Output folder. Default: runs/<recipe> (runs/<recipe>_smoke with --smoke).",
            ),
            click.option(
                "--smoke",
                is_flag=True,
                help="Run the whole recipe in seconds on tiny synthetic data (checks the pipeline, not the numbers).",
            ),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Accept an --out of another configuration and re-run the selected runs from scratch.",
            ),
            opt.generated_data_options(),
            click.option(
                "--dry-run",
                is_flag=True,
                help="Print the run plan and its GPU-hour estimate, and exit (trains nothing).",
            ),
            click.option(
                "--gpu-tflops",
                type=click.FloatRange(min=0, min_open=True),
                default=cost.DEFAULT_GPU_TFLOPS,
                show_default=True,
                help="Sustained TFLOP/s the plan's GPU-hour estimate assumes (an assumption, not a measurement: "
                "docs/guides/recipes.md#cost).",
            ),
            opt.checkpoint_every_option(),
            opt.tensorboard_option(),
            launch_lib.data_parallel_options(),
            opt.verbose_level_option(),
        ],
        f,
    )


def _joined(ctx, param, values):
    """`--x a --x b,c` -> `["a", "b", "c"]` (or None when not given)."""
    out = [v for value in values or () for v in value]
    return out or None


def _load(name):
    try:
        return recipes.load_recipe(name)
    except recipes.RecipeError as e:  # the recipe file is the user's input
        raise click.UsageError(opt.command_line_message(e)) from None


def _echo_plan(recipe, runs, out, gpu_tflops=cost.DEFAULT_GPU_TFLOPS):
    echo = opt.echo()
    dims = {
        "methods": sorted({m for r in runs for m in r.methods}, key=[m.id for m in recipe.methods].index),
        "datasets": sorted({r.dataset for r in runs}, key=recipe.datasets.index),
        "archs": sorted({r.arch for r in runs}, key=recipe.archs.index),
        "norms": sorted({r.norm for r in runs}, key=recipe.norms.index),
        "seeds": sorted({r.seed for r in runs}),
    }
    shared = [m for r in runs for m in r.methods[1:]]
    echo(
        f"Plan for {recipe.name} ({recipe.paper}): {len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{runs[0].epochs} epoch{'s' if runs[0].epochs != 1 else ''} each, batch size {runs[0].batch_size}"
        + (", SMOKE" if runs[0].smoke else "")
        + f" -> {out}"
    )
    if runs[0].smoke:
        echo(f"  smoke: every run is {recipes.smoke_description()} (the archs and datasets below name the folders)")
    for key, values in dims.items():
        echo(f"  {key} ({len(values)}): {', '.join(map(str, values))}")
    if shared:
        echo(f"  (methods sharing another method's run: {', '.join(sorted(set(shared)))})")
    generated = runs[0].generated
    if generated is not None:
        source = generated["path"] or "none given: pass --generated-data PATH"
        if runs[0].smoke:
            source = f"synthetic images standing in for {generated['path'] or 'the file'}"
        echo(f"  generated data: {generated['fraction']:g} of each batch, from {source}")
    estimates = [cost.estimate(r, gpu_tflops) for r in runs]
    widths = [
        4,
        max(len(r.method) for r in runs),
        max(len(r.dataset) for r in runs),
        max(len(r.arch) for r in runs),
        4,
        4,
    ]
    header = ["#", "method", "dataset", "arch", "norm", "seed", "GPU-h"]
    widths.append(7)
    echo("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  folder")
    for i, (r, e) in enumerate(zip(runs, estimates), 1):
        cells = [str(i), r.method, r.dataset, r.arch, r.norm, str(r.seed), _hours(e)]
        opts = "".join(f" {k}={v}" for k, v in r.options.items())
        echo(
            "  "
            + "  ".join(c.ljust(w) for c, w in zip(cells, widths))
            + f"  {r.run_dir}{opts and '  [' + opts.strip() + ']'}"
        )
    known = [e for e in estimates if e is not None]
    if known:
        unknown = len(estimates) - len(known)
        echo(
            f"  GPU-hour estimate: {_hours({'gpu_hours': sum(e['gpu_hours'] for e in known)})} in total"
            + (f" ({unknown} run(s) of unknown cost left out)" if unknown else "")
            + f", {sum(e['flops'] for e in known):.3g} FLOPs at an assumed {gpu_tflops:g} TFLOP/s sustained "
            "(--gpu-tflops; an estimate from the passes per step, not a measurement: docs/guides/recipes.md#cost)"
        )


def _hours(e):
    """`"12.3"` GPU-hours (`"<0.01"`, or `"?"` for a network whose FLOPs are unknown)."""
    if e is None:
        return "?"
    return "<0.01" if e["gpu_hours"] < 0.01 else f"{e['gpu_hours']:.3g}"


def _run_recipe_command(
    name,
    plan,
    data_dir,
    out,
    overwrite,
    dry_run,
    verbose,
    sync_batchnorm=False,
    checkpoint_every=None,
    tensorboard=None,
    gpu_tflops=cost.DEFAULT_GPU_TFLOPS,
):
    """The body of every `keras-rpat recipe <name>` command.

    Args:
        name: the recipe.
        plan: the arguments of `Recipe.runs` (`dataset`, `arch`, `norm`, `method`, `seeds`, `epochs`,
            `smoke`, `batch_size`, `generated_data`, `generated_fraction`).
        data_dir, out, overwrite, dry_run, verbose, sync_batchnorm, checkpoint_every, tensorboard, gpu_tflops:
            the command's options.
    """
    recipe = _load(name)
    try:
        runs = recipe.runs(**plan)
    except recipes.RecipeError as e:
        raise click.UsageError(str(e)) from None
    if not dry_run and not plan["smoke"] and any(r.generated and r.generated["path"] is None for r in runs):
        raise click.UsageError(recipes.missing_generated_message(name))
    out = out or os.path.join("runs", f"{name}_smoke" if plan["smoke"] else name)
    launch = launch_lib.Launch(out)
    if not dry_run:
        config = {"recipe": recipe.name, "runs": [r.run_dir for r in runs], "fingerprint": runs[0].fingerprint}
        config |= {"out": out, "overwrite": overwrite}
        launch = launch_lib.join(out, sync_batchnorm, config, runs[0].batch_size)
    launch.echo(opt.backend_line(load=not dry_run))  # a plan loads no Keras
    if launch.primary:
        _echo_plan(recipe, runs, out, gpu_tflops)
    if dry_run:
        return
    try:
        outcome = recipes.run_recipe(
            recipe,
            runs,
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
    report = outcome["report"]
    skipped = sum(1 for r in outcome["results"] if r.get("skipped"))
    launch.echo(
        f"{len(runs)} run(s) complete ({skipped} already done). Wrote {report['markdown']} and {report['json']}."
    )
    for path in report["figures"]:
        launch.echo(f"Wrote {path}")


def _recipe_command(name):
    """Builds the `keras-rpat recipe <name>` command from the recipe file."""
    try:
        recipe = recipes.load_recipe(name)
        short = recipe.title
        runs = recipe.runs()
        body = (
            f"{recipe.title}.\n\n{recipe.caption}\n\n"
            f"Default plan: {len(runs)} runs ({len(recipe.methods)} methods, datasets {', '.join(recipe.datasets)}, "
            f"archs {', '.join(recipe.archs)}, norms {', '.join(recipe.norms)}, seeds {','.join(map(str, recipe.seeds))}), "
            f"{recipe.epochs} epochs each. `keras-rpat recipe show {name}` prints the configuration and the paper's numbers; "
            "--dry-run prints the plan."
        )
    except recipes.RecipeError as e:
        short = f"(invalid recipe: {str(e)[:60]}...)"
        body = f"The recipe file is invalid:\n\n{e}"

    @click.command(name=name, help=body, short_help=short)
    @recipe_run_options
    def command(
        data_dir, out, overwrite, dry_run, verbose, sync_batchnorm, checkpoint_every, tensorboard, gpu_tflops, **plan
    ):
        _run_recipe_command(
            name,
            plan,
            data_dir,
            out,
            overwrite,
            dry_run,
            verbose,
            sync_batchnorm,
            checkpoint_every,
            tensorboard,
            gpu_tflops,
        )

    return command


class RecipeGroup(click.Group):
    """`keras-rpat recipe`: `list`, `show` and one command per recipe file."""

    def list_commands(self, ctx):
        return sorted(self.commands) + [n for n in recipes.list_recipes() if n not in self.commands]

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in recipes.list_recipes():
            return _recipe_command(cmd_name)
        return None

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and name.endswith(".toml"):
            raise click.UsageError(
                f"Recipes are run by name, not by file: {name!r}. Put your recipe file in a folder, set "
                f"{recipes.RECIPES_ENV}=<that folder> and run `keras-rpat recipe <name>` (the file's stem).",
                ctx,
            )
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            valid = ", ".join(self.list_commands(ctx))
            raise click.UsageError(f"Unknown recipe or command {name!r}. Valid: {valid}.", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=RecipeGroup, name="recipe")
def recipe_group():
    """Reproduce a table or figure of the RPAT paper (ICCV 2025).

    Each recipe (recipes/*.toml) holds the paper's configuration and numbers
    (`beyond`: a recipe beyond the paper, with published reference rows).
    A run writes per-run results JSON, a Markdown table of the measured numbers
    beside the paper's, and (for figures) PNGs. Re-running the same command
    resumes: finished runs are skipped, interrupted ones continue.

    Example: keras-rpat recipe table3 --arch preactresnet18
    """


@recipe_group.command("list")
def list_command():
    """List the recipes."""
    names = recipes.list_recipes()
    if not names:
        folder, env = recipes.recipes_dir(), recipes.RECIPES_ENV
        if os.environ.get(env):
            missing = "" if folder.is_dir() else " (no such folder)"
            raise click.ClickException(
                f"No recipe files (*.toml) in {folder}{missing}, the folder ${env} names. Point ${env} to a folder "
                "of recipe files, or unset it for the paper's recipes."
            )
        raise click.ClickException(f"No recipes found in {folder} (set ${env} to a folder of recipe files).")
    rows = []
    for name in names:
        try:
            recipe = recipes.load_recipe(name)
            rows.append((name, recipe.paper, f"{len(recipe.runs()):>3} runs x {recipe.epochs} epochs  {recipe.title}"))
        except recipes.RecipeError as e:
            rows.append((name, None, f"INVALID: {e}"))
    widths = [max(len(r[i] or "") for r in rows) for i in (0, 1)]
    for name, paper, text in rows:
        click.echo(f"{name:<{widths[0]}} " + (text if paper is None else f"{paper:<{widths[1]}} {text}"))


@recipe_group.command("show")
@click.argument("name")
def show_command(name):
    """Print a recipe's configuration and the paper's numbers."""
    recipe = _load(name)
    click.echo(recipe.describe())
    click.echo("")
    click.echo(f"Default plan: {len(recipe.runs())} runs; file: {recipe.path}")
