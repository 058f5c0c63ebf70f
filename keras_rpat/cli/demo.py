"""`keras-rpat demo`: PGD-AT vs PGD-AT + RPAT on the built-in synthetic data."""

import click

from keras_rpat.cli import options as opt

__all__ = ["demo_command"]


@click.command("demo")
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True, help="Training epochs per method.")
@click.option(
    "--n-train", type=click.IntRange(min=1), default=2048, show_default=True, help="Synthetic training images."
)
@click.option("--n-test", type=click.IntRange(min=1), default=512, show_default=True, help="Synthetic test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@opt.seed_option()
@click.option("--out", type=opt.OUT_FILE, default=None, help="Also write the table as JSON here.")
def demo_command(epochs, n_train, n_test, batch_size, seed, out):
    """Train PGD-AT and PGD-AT + RPAT on the built-in synthetic data (no download).

    A small CNN on CPU, L-inf 8/255, PGD-10 training, PGD-20 evaluation; prints
    clean and PGD-20 accuracy of both and the time taken.
    """
    from keras_rpat import demo as demo_lib  # imports Keras: when the demo runs, not to parse its options

    click.echo(opt.backend_line())
    rows = demo_lib.run_demo(
        epochs=epochs, n_train=n_train, n_test=n_test, batch_size=batch_size, seed=seed, echo=click.echo
    )
    click.echo("")
    click.echo(demo_lib.format_table(rows))
    if out:
        demo_lib.save_rows(rows, out)
        click.echo(f"wrote {out}")
