"""The `keras-rpat` command line (`keras-rpat = keras_rpat.cli:main`).

`KERAS_BACKEND` chooses the backend (torch when unset); it must be set before
the command starts, and an unsupported one is refused in one line (exit status 2).

The commands load on demand: `COMMANDS` names each command's module, which is
imported only when that command runs (or its own `--help` is asked for), so
`keras-rpat --help`, `--version` and a mistyped command answer without
importing Keras, torch or TensorFlow (`benchmarks/cli_startup.py` measures it).

| module | commands |
|---|---|
| `options` | the shared vocabulary: one Click type or option per concept |
| `train` | `train` |
| `recipe` | `recipe list`, `recipe show`, `recipe <table or figure>` |
| `report` | `report` |
| `evaluate` | `eval`, `autoattack` |
| `convert` | `convert` (PyTorch checkpoint -> .keras), `export` (.keras -> PyTorch / ONNX) |
| `demo` | `demo` |
"""

import contextlib
import importlib
import os
import warnings

import click

from keras_rpat._version import __version__

__all__ = ["COMMANDS", "main"]

# name -> (module, attribute, the short help shown by `keras-rpat --help`).
# tests/test_cli_startup.py checks that each short help is the command's own.
COMMANDS = {
    "recipe": ("keras_rpat.cli.recipe", "recipe_group", "Reproduce a table or figure of the RPAT paper (ICCV 2025)."),
    "train": ("keras_rpat.cli.train", "train_command", "Train and evaluate one model (one run of a recipe)."),
    "report": (
        "keras_rpat.cli.report",
        "report_command",
        "Rebuild a recipe's Markdown, JSON and figures from the run folders in DIR.",
    ),
    "eval": (
        "keras_rpat.cli.evaluate",
        "eval_command",
        "Clean, PGD-20 and AutoAttack accuracy of a saved model, with Mean and NRR.",
    ),
    "autoattack": (
        "keras_rpat.cli.evaluate",
        "autoattack_command",
        "AutoAttack robust accuracy of a saved model (resumable with --state).",
    ),
    "convert": ("keras_rpat.cli.convert", "convert_command", "Convert a PyTorch checkpoint (.pt) into a .keras model."),
    "export": ("keras_rpat.cli.convert", "export_command", "Export a .keras model as a PyTorch state_dict or ONNX."),
    "demo": (
        "keras_rpat.cli.demo",
        "demo_command",
        "Train PGD-AT and PGD-AT + RPAT on the built-in synthetic data (no download).",
    ),
}

# How `keras-rpat --help` groups the commands.
SECTIONS = (
    ("Reproduce the paper", ("recipe", "train", "report")),
    ("Evaluate a saved model", ("eval", "autoattack")),
    ("PyTorch checkpoints", ("convert", "export")),
    ("Try it", ("demo",)),
)


def load_command(name):
    """The Click command `name` of `COMMANDS`, imported now."""
    module, attribute, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), attribute)


class LazyGroup(click.Group):
    """A Click group that imports a command's module only when the command is used.

    `--help` lists the commands in `SECTIONS`, in that order, with the short
    help of `COMMANDS` (nothing is imported to print it). An unexpected error
    of a command is printed as one line `Error: ...` (exit status 1) instead of
    a traceback, unless `--debug` (or `KERAS_RPAT_DEBUG=1`); mistakes in
    options are usage errors (exit status 2).
    """

    def invoke(self, ctx):
        try:
            with _one_line_warnings():
                return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if ctx.params.get("debug") or os.environ.get("KERAS_RPAT_DEBUG") == "1":
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            if not isinstance(e, (ValueError, OSError, RuntimeError, ImportError)):
                message = f"{type(e).__name__}: {message}"
            raise click.ClickException(f"{message} (rerun with keras-rpat --debug ... for the traceback)") from None

    def list_commands(self, ctx):
        ordered = [name for _, names in SECTIONS for name in names]
        return ordered + sorted(set(COMMANDS) - set(ordered))

    def get_command(self, ctx, cmd_name):
        if cmd_name not in COMMANDS:
            return None
        return load_command(cmd_name)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and name not in COMMANDS:
            raise click.UsageError(f"Unknown command {name!r}. Valid: {', '.join(self.list_commands(ctx))}.", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        for title, names in SECTIONS:
            with formatter.section(title):
                formatter.write_dl([(n, COMMANDS[n][2]) for n in names])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keras-rpat")
@click.option(
    "--no-fast-path",
    is_flag=True,
    help="Train on the Keras path instead of the torch fast path (same results, slower; for debugging).",
)
@click.option(
    "--allow-large-l2",
    is_flag=True,
    help="Accept L2 budgets and steps above 10 (refused by default: 128 is almost surely meant as 128/255).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(no_fast_path, allow_large_l2, debug):
    """keras-rpat: Robust Perception Adversarial Training (RPAT, ICCV 2025) for Keras 3.

    The backend is chosen with KERAS_BACKEND (torch by default).
    """
    checks = importlib.import_module("keras_rpat._checks")  # here: it imports NumPy, which `--help` needs not
    try:
        checks.check_keras_backend()
    except ImportError as e:
        if debug:
            raise
        raise BackendError(str(e)) from None
    if no_fast_path:
        importlib.import_module("keras_rpat.config").set_fast_path_default(False)
    checks.allow_large_l2_budgets(allow_large_l2)


class BackendError(click.ClickException):
    """An unsupported `KERAS_BACKEND`: one line `Error: ...`, exit status 2 (a usage error of the environment)."""

    exit_code = 2


@contextlib.contextmanager
def _one_line_warnings():
    """Prints each warning of a command as one line `Warning: ...` (Python adds the file, line and source).

    Only the printed form changes: warnings that are caught or recorded (`pytest.warns`) are untouched.
    """
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"Warning: {' '.join(str(message).split())}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


if __name__ == "__main__":  # pragma: no cover
    main()
