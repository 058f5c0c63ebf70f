"""The `keras-rpat` command line.

`KERAS_BACKEND` chooses the backend (torch when unset); importing this module
imports Keras, so the variable must be set before the command starts.
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import click  # noqa: E402

import keras_rpat  # noqa: E402,F401


def backend_line():
    """`backend: torch, device: cpu` for the start of every command."""
    import keras

    from keras_rpat.backend import device_name

    return (
        f"keras_rpat {keras_rpat.__version__}, keras {keras.__version__}, "
        f"backend: {keras.config.backend()}, device: {device_name()}"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(keras_rpat.__version__, prog_name="keras-rpat")
def main():
    """keras-rpat: Robust Perception Adversarial Training (RPAT, ICCV 2025) for Keras 3.

    The backend is chosen with KERAS_BACKEND (torch by default).
    """


@main.command()
@click.option("--epochs", default=4, show_default=True, help="Training epochs per method.")
@click.option("--n-train", default=2048, show_default=True, help="Synthetic training images.")
@click.option("--n-test", default=512, show_default=True, help="Synthetic test images.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table as JSON here.")
def demo(epochs, n_train, n_test, batch_size, seed, out):
    """Train PGD-AT and PGD-AT + RPAT on the built-in synthetic data (no download).

    A small CNN on CPU, L-inf 8/255, PGD-10 training, PGD-20 evaluation; prints
    clean and PGD-20 accuracy of both and the time taken.
    """
    from keras_rpat import demo as demo_lib

    click.echo(backend_line())
    rows = demo_lib.run_demo(
        epochs=epochs, n_train=n_train, n_test=n_test, batch_size=batch_size, seed=seed, echo=click.echo
    )
    click.echo("")
    click.echo(demo_lib.format_table(rows))
    if out:
        demo_lib.save_rows(rows, out)
        click.echo(f"wrote {out}")


def _register_commands():
    """Adds the evaluation, training and recipe commands (defined in their own modules)."""
    from keras_rpat._cli_eval import autoattack_command, eval_command
    from keras_rpat._cli_recipe import recipe_group, train_command

    main.add_command(train_command, "train")
    main.add_command(eval_command, "eval")
    main.add_command(autoattack_command, "autoattack")
    main.add_command(recipe_group, "recipe")


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
