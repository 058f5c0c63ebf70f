"""Paper recipes: the configuration and numbers of every table and figure.

A recipe is data: `recipes/<name>.toml` (in the repository's top-level
`recipes/` folder, shipped in the wheel as package data, or the folder named
by `$KERAS_RPAT_RECIPES`) holds the
paper's table or figure, its caption, a flat configuration (methods, datasets,
architectures, norms, epochs, seeds, schedule, evaluation), the paper's numbers
per row and a tolerance. This package turns a recipe into a list of runs and
runs them, one module per job:

* `schema`: the recipe file's fields and types; finding, reading and
  validating recipes.
* `plan`: `Recipe` and its run plan (`RunSpec`s).
* `build`: what one run is made of (`build_run`: preset, data, model, trainer).
* `experiment`: one run (`run_experiment`), and `single_run` for
  `keras-rpat train`.
* `runner`: a plan of runs (`run_recipe`), then the report.
* `results`, `report`, `plots`: results read back, averaged over seeds, put
  beside the paper's numbers, drawn.

The names below are re-exported here:

* `list_recipes()` / `load_recipe(name)` read and validate the TOML files.
* `Recipe.runs(...)` is the run plan (one `RunSpec` per method, dataset,
  architecture, norm and seed), optionally narrowed.
* `run_experiment(spec, out_dir)` trains one run with `model.fit` (resumable
  through `keras.callbacks.BackupAndRestore`), keeps the best and final
  checkpoints (`keras_rpat.callbacks.RobustEvaluation`), evaluates both
  (clean, PGD-20, AutoAttack, or the perception analysis of Figures 2 and 5)
  and writes `results.json` atomically.
* `run_recipe(recipe, runs, out_dir)` runs a plan and `write_report` puts the
  measured numbers beside the paper's in `<out>/<recipe>.md` (and draws the
  figures as PNG).

Example:

```python
recipe = keras_rpat.recipes.load_recipe("table3")
runs = recipe.runs(arch="preactresnet18", dataset="cifar10", norm="linf", seeds=[0])
keras_rpat.recipes.run_recipe(recipe, runs, "runs/table3")
```

`smoke=True` runs the whole recipe end to end in seconds: tiny synthetic data,
a tiny CNN, one epoch, one- and two-step attacks and a cheap AutoAttack, through
every code path of a real run.
"""

import importlib as _importlib

from keras_rpat.recipes.plan import Recipe
from keras_rpat.recipes.plan import RunSpec
from keras_rpat.recipes.plan import SMOKE
from keras_rpat.recipes.plan import load_recipe
from keras_rpat.recipes.plan import run_cell
from keras_rpat.recipes.plan import smoke_description
from keras_rpat.recipes.schema import METRICS
from keras_rpat.recipes.schema import Method
from keras_rpat.recipes.schema import RECIPES_ENV
from keras_rpat.recipes.schema import RESULTS_FORMAT
from keras_rpat.recipes.schema import RecipeError
from keras_rpat.recipes.schema import list_recipes
from keras_rpat.recipes.schema import missing_generated_message
from keras_rpat.recipes.schema import parse_seeds
from keras_rpat.recipes.schema import recipes_dir

# Reading, validating and planning recipes (`schema`, `plan`) needs no framework; the
# rest trains, evaluates and draws, so it loads on first use (PEP 562): the
# command line lists, shows and checks recipes without Keras, torch or TensorFlow.
_LAZY = {
    "build_preset": "build",
    "run_experiment": "experiment",
    "single_run": "experiment",
    "report_tables": "report",
    "write_report": "report",
    "collect_results": "results",
    "check_out_dir": "runner",
    "run_recipe": "runner",
    "run_single": "runner",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_rpat.recipes' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"keras_rpat.recipes.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "METRICS",
    "RECIPES_ENV",
    "RESULTS_FORMAT",
    "SMOKE",
    "Method",
    "Recipe",
    "RecipeError",
    "RunSpec",
    "build_preset",
    "check_out_dir",
    "collect_results",
    "list_recipes",
    "load_recipe",
    "missing_generated_message",
    "parse_seeds",
    "recipes_dir",
    "run_cell",
    "smoke_description",
    "report_tables",
    "run_experiment",
    "run_recipe",
    "run_single",
    "single_run",
    "write_report",
]
