"""The `keras-rpat` command line (`keras-rpat = keras_rpat.cli:main`).

`KERAS_BACKEND` chooses the backend (torch when unset); importing this package
imports Keras, so the variable must be set before the command starts.

| module | commands |
|---|---|
| `options` | the shared vocabulary: one Click type or option per concept |
| `train` | `train` |
| `recipe` | `recipe list`, `recipe show`, `recipe <table or figure>` |
| `evaluate` | `eval`, `autoattack` |
| `demo` | `demo` |
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import click  # noqa: E402

from keras_rpat import trainer as trainer_lib  # noqa: E402
from keras_rpat._version import __version__  # noqa: E402
from keras_rpat.cli.demo import demo_command  # noqa: E402
from keras_rpat.cli.evaluate import autoattack_command  # noqa: E402
from keras_rpat.cli.evaluate import eval_command  # noqa: E402
from keras_rpat.cli.options import backend_line  # noqa: E402
from keras_rpat.cli.recipe import recipe_group  # noqa: E402
from keras_rpat.cli.train import train_command  # noqa: E402

__all__ = ["backend_line", "main"]

# How `keras-rpat --help` groups the commands.
SECTIONS = (
    ("Reproduce the paper", ("recipe", "train")),
    ("Evaluate a saved model", ("eval", "autoattack")),
    ("Try it", ("demo",)),
)


class SectionedGroup(click.Group):
    """A Click group whose `--help` lists the commands in `SECTIONS`, in that order.

    An unexpected error of a command is printed as one line `Error: ...` (exit
    status 1) instead of a traceback, unless `--debug` (or `KERAS_RPAT_DEBUG=1`).
    Mistakes in options are usage errors (exit status 2).
    """

    def invoke(self, ctx):
        try:
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
        return ordered + sorted(set(self.commands) - set(ordered))

    def format_commands(self, ctx, formatter):
        listed = set()
        for title, names in SECTIONS + (("Other commands", tuple(sorted(set(self.commands)))),):
            rows = [
                (n, self.commands[n].get_short_help_str(limit=80))
                for n in names
                if n in self.commands and n not in listed
            ]
            listed.update(n for n, _ in rows)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


@click.group(cls=SectionedGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keras-rpat")
@click.option(
    "--no-fast-path",
    is_flag=True,
    help="Train on the Keras path instead of the torch fast path (same results, slower; for debugging).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(no_fast_path, debug):
    """keras-rpat: Robust Perception Adversarial Training (RPAT, ICCV 2025) for Keras 3.

    The backend is chosen with KERAS_BACKEND (torch by default).
    """
    if no_fast_path:
        trainer_lib.set_fast_path_default(False)


main.add_command(recipe_group, "recipe")
main.add_command(train_command, "train")
main.add_command(eval_command, "eval")
main.add_command(autoattack_command, "autoattack")
main.add_command(demo_command, "demo")


if __name__ == "__main__":  # pragma: no cover
    main()
