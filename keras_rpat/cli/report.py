"""`keras-rpat report DIR`: a recipe's Markdown, JSON and figures, rebuilt from its run folders.

```
keras-rpat report runs/table3          # after some (or all) runs of `keras-rpat recipe table3`
```
"""

from pathlib import Path

import click

from keras_rpat import _io
from keras_rpat import recipes

__all__ = ["report_command"]


@click.command("report")
@click.argument("out_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False))
def report_command(out_dir):
    """Rebuild a recipe's Markdown, JSON and figures from the run folders in DIR.

    DIR is the --out of a `keras-rpat recipe` command (runs/<recipe> by
    default). Only the runs whose results.json is complete are reported; the
    table lists the runs still missing, so a partial report can be read while
    the other runs go on.
    """
    config = Path(out_dir) / "config.json"
    fingerprint = _io.read_json(config)
    if config.exists() and not isinstance(fingerprint, dict):
        raise click.ClickException(
            f"{config} is corrupt or truncated (not valid JSON). Delete it and run the `keras-rpat recipe ... --out "
            f"{out_dir}` command of this folder again: it rewrites the file (finished runs are skipped)."
        )
    if not isinstance(fingerprint, dict) or "recipe" not in fingerprint:
        raise click.ClickException(
            f"{out_dir} has no config.json of a recipe run. Give the --out folder of `keras-rpat recipe <name>`."
        )
    if fingerprint["recipe"] == "train":  # the recipe name of a single run (see `recipes.single_run`)
        raise click.ClickException(
            f"{out_dir} is the folder of one `keras-rpat train` run: its results are in "
            f"{Path(out_dir) / 'results.json'}. `keras-rpat report` rebuilds the tables of a recipe; give it the "
            "--out folder of `keras-rpat recipe <name>`."
        )
    try:
        recipe = recipes.load_recipe(fingerprint["recipe"])
        report = recipes.write_report(recipe, out_dir, fingerprint=fingerprint)
    except recipes.RecipeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote {report['markdown']} and {report['json']}.")
    for path in report["figures"]:
        click.echo(f"Wrote {path}")
