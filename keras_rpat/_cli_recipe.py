"""`keras-rpat recipe ...` and `keras-rpat train` (registered by `keras_rpat.cli`).

```
keras-rpat recipe list
keras-rpat recipe show table3
keras-rpat recipe table3 --arch preactresnet18 --dry-run
keras-rpat recipe table3 --arch preactresnet18             # 24 runs, 200 epochs each
keras-rpat recipe figure2 --smoke                           # seconds, synthetic data
keras-rpat train --method trades+rpat --dataset cifar10 --arch resnet18_bottleneck \\
    --norm linf --epochs 110 --seed 0 --out runs/x
```

One subcommand per recipe file (`recipes/*.toml`, see `keras_rpat.recipes`);
they share one set of options. Re-running a command after an interruption
resumes it: finished runs are skipped and an interrupted run continues from its
last completed epoch.
"""

import os

import click

__all__ = ["recipe_group", "recipe_run_options", "train_command"]


# ---------------------------------------------------------------------------
# Shared options
# ---------------------------------------------------------------------------


def _multi(ctx, param, values):
    """`--x a --x b,c` -> `["a", "b", "c"]` (or None when not given)."""
    out = []
    for value in values or ():
        out.extend(v for v in value.replace(" ", "").split(",") if v)
    return out or None


def _seeds(ctx, param, value):
    if value is None:
        return None
    from keras_rpat import recipes

    try:
        seeds = recipes._parse_seeds(value)
    except recipes.RecipeError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    if not seeds:
        raise click.BadParameter("give at least one seed, e.g. 0,1,2", ctx=ctx, param=param)
    return seeds


def recipe_run_options(f):
    """The options shared by every `keras-rpat recipe <name>` command."""
    options = [
        click.option("--dataset", multiple=True, callback=_multi, help="Only these datasets (repeat or comma-separate), e.g. cifar10."),
        click.option("--arch", multiple=True, callback=_multi, help="Only these architectures; aliases such as preactresnet18 work."),
        click.option("--norm", multiple=True, callback=_multi, help="Only these threat models: linf, l2."),
        click.option("--method", multiple=True, callback=_multi, help="Only these methods: a method id, the paper's label or a preset name."),
        click.option("--seeds", callback=_seeds, default=None, help="Comma-separated seeds. Default: the recipe's (0,1,2); 0 with --smoke."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Train this many epochs instead of the paper's (LR milestones and start epochs scale)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Training batch size. Default: the recipe's (128)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the datasets are (Tiny-ImageNet must be unpacked there)."),
        click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder. Default: runs/<recipe> (runs/<recipe>_smoke with --smoke)."),
        click.option("--smoke", is_flag=True, help="Run the whole recipe in seconds on tiny synthetic data (checks the pipeline, not the numbers)."),
        click.option("--overwrite", is_flag=True, help="Accept an --out of another configuration and re-run the selected runs from scratch."),
        click.option("--dry-run", is_flag=True, help="Print the run plan and exit."),
        click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True, help="0 silent, 1 progress bars, 2 one line per epoch."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _recipes():
    from keras_rpat import recipes

    return recipes


def _load(name):
    recipes = _recipes()
    try:
        return recipes.load_recipe(name)
    except recipes.RecipeError as e:
        raise click.ClickException(str(e)) from None


def _echo_plan(recipe, runs, out):
    dims = {
        "methods": sorted({m for r in runs for m in r.methods}, key=[m.id for m in recipe.methods].index),
        "datasets": sorted({r.dataset for r in runs}, key=recipe.datasets.index),
        "archs": sorted({r.arch for r in runs}, key=recipe.archs.index),
        "norms": sorted({r.norm for r in runs}, key=recipe.norms.index),
        "seeds": sorted({r.seed for r in runs}),
    }
    shared = [m for r in runs for m in r.methods[1:]]
    click.echo(
        f"Plan for {recipe.name} ({recipe.paper}): {len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{runs[0].epochs} epoch{'s' if runs[0].epochs != 1 else ''} each, batch size {runs[0].batch_size}"
        + (", SMOKE (synthetic data)" if runs[0].smoke else "")
        + f" -> {out}"
    )
    for key, values in dims.items():
        click.echo(f"  {key} ({len(values)}): {', '.join(map(str, values))}")
    if shared:
        click.echo(f"  (methods sharing another method's run: {', '.join(sorted(set(shared)))})")
    widths = [4, max(len(r.method) for r in runs), max(len(r.dataset) for r in runs), max(len(r.arch) for r in runs), 4, 4]
    header = ["#", "method", "dataset", "arch", "norm", "seed"]
    click.echo("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  folder")
    for i, r in enumerate(runs, 1):
        cells = [str(i), r.method, r.dataset, r.arch, r.norm, str(r.seed)]
        opts = "".join(f" {k}={v}" for k, v in r.options.items())
        click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + f"  {r.run_dir}{opts and '  [' + opts.strip() + ']'}")


def _run_recipe_command(name, dataset, arch, norm, method, seeds, epochs, batch_size, data_dir, out, smoke, overwrite, dry_run, verbose):
    from keras_rpat.cli import backend_line

    recipes = _recipes()
    click.echo(backend_line())
    recipe = _load(name)
    try:
        runs = recipe.runs(dataset=dataset, arch=arch, norm=norm, method=method, seeds=seeds, epochs=epochs, smoke=smoke, batch_size=batch_size)
    except recipes.RecipeError as e:
        raise click.UsageError(str(e)) from None
    out = out or os.path.join("runs", f"{name}_smoke" if smoke else name)
    _echo_plan(recipe, runs, out)
    if dry_run:
        return
    try:
        outcome = recipes.run_recipe(recipe, runs, out, data_dir=data_dir, overwrite=overwrite, verbose=verbose, echo=click.echo)
    except (recipes.RecipeError, FileNotFoundError, ImportError) as e:
        raise click.ClickException(str(e)) from None
    report = outcome["report"]
    skipped = sum(1 for r in outcome["results"] if r.get("skipped"))
    click.echo(f"{len(runs)} run(s) complete ({skipped} already done). Wrote {report['markdown']} and {report['json']}.")
    for path in report["figures"]:
        click.echo(f"Wrote {path}")


def _recipe_command(name):
    """Builds the `keras-rpat recipe <name>` command from the recipe file."""
    recipes = _recipes()
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
    def command(**kwargs):
        _run_recipe_command(name, **kwargs)

    return command


class RecipeGroup(click.Group):
    """`keras-rpat recipe`: `list`, `show` and one command per recipe file."""

    def list_commands(self, ctx):
        return sorted(self.commands) + [n for n in _recipes().list_recipes() if n not in self.commands]

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in _recipes().list_recipes():
            return _recipe_command(cmd_name)
        return None

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            valid = ", ".join(self.list_commands(ctx))
            raise click.UsageError(f"Unknown recipe or command {name!r}. Valid: {valid}.", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=RecipeGroup, name="recipe")
def recipe_group():
    """Reproduce a table or figure of the RPAT paper (ICCV 2025).

    Each recipe (recipes/*.toml) holds the paper's configuration and numbers.
    A run writes per-run results JSON, a Markdown table of the measured numbers
    beside the paper's, and (for figures) PNGs. Re-running the same command
    resumes: finished runs are skipped, interrupted ones continue.

    Example: keras-rpat recipe table3 --arch preactresnet18
    """


@recipe_group.command("list")
def list_command():
    """List the recipes."""
    recipes = _recipes()
    names = recipes.list_recipes()
    if not names:
        raise click.ClickException(f"No recipes found in {recipes.recipes_dir()} (set ${recipes.RECIPES_ENV}).")
    for name in names:
        try:
            recipe = recipes.load_recipe(name)
            n = len(recipe.runs())
            click.echo(f"{name:<8} {recipe.paper:<9} {n:>3} runs x {recipe.epochs} epochs  {recipe.title}")
        except recipes.RecipeError as e:
            click.echo(f"{name:<8} INVALID: {e}")


@recipe_group.command("show")
@click.argument("name")
def show_command(name):
    """Print a recipe's configuration and the paper's numbers."""
    recipe = _load(name)
    click.echo(recipe.describe())
    click.echo("")
    click.echo(f"Default plan: {len(recipe.runs())} runs; file: {recipe.path}")


# ---------------------------------------------------------------------------
# keras-rpat train
# ---------------------------------------------------------------------------


def _choice_error(ctx, param, value, valid):
    raise click.BadParameter(f"{value!r} is not valid. Valid: {', '.join(valid)}.", ctx=ctx, param=param)


def _preset(ctx, param, value):
    from keras_rpat import presets

    try:
        return presets.canonical_name(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _arch(ctx, param, value):
    if value is None:
        return None
    from keras_rpat import models

    try:
        return models.canonical_name(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _dataset(ctx, param, value):
    from keras_rpat import datasets

    if value.lower().endswith(".npz"):
        return value
    key = value.strip().lower().replace("-", "_")
    key = {"cifar_10": "cifar10", "cifar_100": "cifar100", "tinyimagenet": "tiny_imagenet"}.get(key, key)
    valid = datasets.list_datasets()
    if key not in valid:
        _choice_error(ctx, param, value, valid + ["a path to an .npz file"])
    return key


def _norm(ctx, param, value):
    from keras_rpat.attacks import _canonical_norm

    try:
        return _canonical_norm(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _evals(ctx, param, value):
    from keras_rpat.evaluation import EVALUATION_ATTACKS
    from keras_rpat.evaluation import _normalise_attacks

    try:
        return tuple(_normalise_attacks(value))
    except ValueError:
        _choice_error(ctx, param, value, list(EVALUATION_ATTACKS))


def _checkpoints(ctx, param, value):
    items = [v for v in value.replace(" ", "").split(",") if v]
    bad = [v for v in items if v not in ("best", "final")]
    if bad or not items:
        _choice_error(ctx, param, value, ["best", "final", "best,final"])
    return tuple(dict.fromkeys(items))


@click.command("train")
@click.option("--method", required=True, callback=_preset, help="A preset: pgd_at, trades, mart, consistency_at (each +rpat), rebat, rpat_plus_plus, clean, random_noise.")
@click.option("--dataset", required=True, callback=_dataset, help="cifar10, cifar100, tiny_imagenet, synthetic, or an .npz file.")
@click.option("--arch", callback=_arch, default=None, help="Architecture (aliases work). Default: the preset's (Bench ResNet-18 / PreActResNet-18).")
@click.option("--norm", callback=_norm, default="linf", show_default=True, help="Threat model: linf (8/255) or l2 (128/255).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: the preset's (110 Bench, 200 ReBAT/RPAT++); shorter runs scale the schedule.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default 128 (32 with --smoke).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder. Default: runs/train/<method>-<dataset>-<arch>-<norm>-seed<seed>.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the datasets are.")
@click.option("--eval-attacks", callback=_evals, default="clean,pgd20,autoattack", show_default=True, help="Evaluations of the checkpoints.")
@click.option("--checkpoints", callback=_checkpoints, default="best,final", show_default=True, help="Checkpoints to evaluate.")
@click.option("--cutmix", is_flag=True, help="CutMix (ReBAT/RPAT++; Table 4 '*').")
@click.option("--stronger-attack", is_flag=True, help="Table 6 '$': epsilon 10/255, 12 steps from epoch 100 (ReBAT/RPAT++, linf).")
@click.option("--lr-factor", type=float, default=None, help="Piecewise LR divisor of ReBAT/RPAT++ (1.5).")
@click.option("--beta", type=float, default=None, help="BoAT / RPAT++ weight (1.0).")
@click.option("--proxy", type=click.Choice(["logits", "penultimate", "third_to_last"]), default=None, help="RPAT perception proxy (Table 5).")
@click.option("--distance", type=click.Choice(["mse", "kl", "js", "cosine"]), default=None, help="RPAT regulariser (Figure 4a).")
@click.option("--alpha", type=float, default=None, help="RPAT interpolation weight on the perturbation (paper convention, 0.5).")
@click.option("--alpha-sampling", type=click.Choice(["fixed", "beta-", "beta+"]), default=None, help="Figure 4b's Beta-/Beta+.")
@click.option("--l2-step-size", default=None, help="L2 attack step (default 32/255; 15/255 is the upstream convention).")
@click.option("--smoke", is_flag=True, help="Tiny synthetic data, tiny CNN, 1 epoch: checks the pipeline in seconds.")
@click.option("--overwrite", is_flag=True, help="Replace a run folder of another configuration (and re-run from scratch).")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True, help="0 silent, 1 progress bars, 2 one line per epoch.")
def train_command(method, dataset, arch, norm, epochs, seed, batch_size, out, data_dir, eval_attacks, checkpoints, smoke, overwrite, verbose, **option_values):
    """Train and evaluate one model (one run of a recipe).

    Trains METHOD on DATASET with the paper's settings, keeps the best and
    final checkpoints, evaluates both (clean, PGD-20, AutoAttack) and writes
    results.json in --out. Re-running the same command resumes an interrupted
    run; a finished one is skipped.

    Example: keras-rpat train --method trades+rpat --dataset cifar10
    --arch resnet18_bottleneck --norm linf --epochs 110 --seed 0 --out runs/x
    """
    from keras_rpat import presets
    from keras_rpat import recipes
    from keras_rpat.cli import backend_line

    click.echo(backend_line())
    options = {k: v for k, v in option_values.items() if v not in (None, False)}
    raw = {"id": "run", "preset": method, "label": method, "options": dict(options)}
    try:
        [m] = recipes.Recipe._validate_methods("train", [raw], {"norms": [norm], "perception": None})
    except recipes.RecipeError as e:
        raise click.UsageError(str(e).replace("train methods[0]: ", "")) from None
    preset = presets.get(method, norm=norm)
    arch = arch or preset.arch
    m.id = method
    spec_options = recipes._canonical_options(m, norm)
    epochs = epochs or (recipes.SMOKE["epochs"] if smoke else preset.epochs)
    batch_size = batch_size or (recipes.SMOKE["batch_size"] if smoke else 128)
    spec = recipes.RunSpec(
        recipe="train",
        method=method,
        methods=(method,),
        preset=method,
        label=method,
        options=spec_options,
        dataset=dataset,
        arch=arch,
        norm=norm,
        seed=seed,
        stem_stride=2 if dataset == "tiny_imagenet" else 1,
        epochs=epochs,
        batch_size=batch_size,
        eval_attacks=eval_attacks,
        checkpoints=checkpoints,
        l2_step_size=spec_options.get("l2_step_size", 32 / 255),
        smoke=smoke,
        fingerprint={"recipe": "train", "epochs": epochs, "batch_size": batch_size, "smoke": smoke},
        run_dir="",
    )
    out = out or os.path.join("runs", "train", f"{method}-{dataset}-{arch}-{norm}-seed{seed}" + ("-smoke" if smoke else ""))
    click.echo(f"{spec.describe()} -> {out}")
    try:
        recipes._preflight([spec], data_dir)
        recipes.check_out_dir(out, recipes._jsonable(spec.run_fingerprint()), overwrite=overwrite)
        result = recipes.run_experiment(spec, out, data_dir=data_dir, verbose=verbose, overwrite=overwrite, echo=click.echo)
    except (recipes.RecipeError, FileNotFoundError, ImportError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote {os.path.join(out, 'results.json')}" + (" (already complete)" if result.get("skipped") else ""))
