"""Paper recipes: the configuration and numbers of every table and figure.

A recipe is data: `recipes/<name>.toml` (in the repository's top-level
`recipes/` folder, or the folder named by `$KERAS_RPAT_RECIPES`) holds the
paper's table or figure, its caption, a flat configuration (methods, datasets,
architectures, norms, epochs, seeds, schedule, evaluation), the paper's numbers
per row and a tolerance. This module turns a recipe into a list of runs and
runs them:

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

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import keras

__all__ = [
    "METRICS",
    "Method",
    "Recipe",
    "RecipeError",
    "RunSpec",
    "list_recipes",
    "load_recipe",
    "recipes_dir",
    "run_experiment",
    "run_recipe",
    "write_report",
]

RECIPES_ENV = "KERAS_RPAT_RECIPES"
RESULTS_FORMAT = "keras_rpat.recipe_result"
RESULTS_VERSION = 1

# Metrics a recipe row can report (percent, except the MSEs).
METRICS = (
    "clean_best",
    "clean_final",
    "pgd20_best",
    "pgd20_final",
    "aa_best",
    "aa_final",
    "mean",
    "nrr",
    "mean_final",
    "nrr_final",
    "mse_success",
    "mse_failure",
    "clean_acc",
    "perturbed_acc",
)
METRIC_LABELS = {
    "clean_best": "Clean best",
    "clean_final": "Clean final",
    "pgd20_best": "PGD-20 best",
    "pgd20_final": "PGD-20 final",
    "aa_best": "AA best",
    "aa_final": "AA final",
    "mean": "Mean",
    "nrr": "NRR",
    "mean_final": "Mean final",
    "nrr_final": "NRR final",
    "mse_success": "MSE success",
    "mse_failure": "MSE failure",
    "clean_acc": "Clean acc",
    "perturbed_acc": "Perturbed acc",
}
_MSE_METRICS = ("mse_success", "mse_failure")

DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet"}
NORM_LABELS = {"linf": "Linf", "l2": "L2"}
ARCH_LABELS = {
    "resnet18_bottleneck": "ResNet-18 (Bench, Bottleneck)",
    "resnet18": "ResNet-18 (BasicBlock)",
    "preact_resnet18": "PreActResNet-18",
    "wide_resnet34_10": "WRN-34-10",
    "wide_resnet28_10": "WRN-28-10",
}
CHECKPOINTS = ("best", "final")
KINDS = ("table", "figure")
LAYOUT_DIMS = ("dataset", "arch", "norm", "row", "group")

# Options a recipe method may set, with their type and (where the preset does
# not decide) their default. Defaults are dropped when a run is keyed, so two
# methods that differ only by spelling out a default share one run.
_OPTION_TYPES = {
    "cutmix": bool,
    "stronger_attack": bool,
    "lr_factor": float,
    "beta": float,
    "proxy": str,
    "distance": str,
    "alpha": float,
    "alpha_sampling": str,
    "rp_weight": float,
    "l2_step_size": str,
}
_RP_OPTIONS = {"proxy": "proxy", "distance": "distance", "alpha": "alpha", "alpha_sampling": "alpha_sampling", "rp_weight": "weight"}

_TOP_KEYS = ("name", "title", "paper", "caption", "kind", "notes", "config", "methods", "layout", "paper_results", "literature")
_CONFIG_KEYS = (
    "datasets",
    "archs",
    "setups",
    "norms",
    "epochs",
    "batch_size",
    "pipeline",
    "seeds",
    "lr_schedule",
    "lr_milestones",
    "lr_factor",
    "eval_attacks",
    "autoattack_version",
    "checkpoints",
    "reported_model",
    "select_steps",
    "l2_step_size",
    "tolerance",
    "perception",
)
_METHOD_KEYS = ("id", "preset", "label", "row", "group", "options", "perturbation", "expect")
_EXPECTATIONS = ("failure > success", "failure < success")
# `keras_rpat.autoattack_bridge.AA_VERSIONS` (not imported here: it imports torch).
_AA_VERSIONS = ("standard", "plus", "rand", "custom")

# Smoke mode: everything tiny, every code path of a real run.
SMOKE = {
    "n_train": 64,
    "n_test": 32,
    "num_classes": 10,
    "image_size": 16,
    "widths": (4, 8, 8),
    "batch_size": 32,
    "epochs": 1,
    "train_steps": 2,
    "select_steps": 1,
    "eval_steps": 2,
    "eval_n": 16,
    "aa_attacks": ["apgd-ce"],
    "aa_options": {"apgd": {"n_iter": 2}},
}


class RecipeError(ValueError):
    """A recipe file, a run plan or an output folder is not valid."""


# ---------------------------------------------------------------------------
# Finding and reading recipes
# ---------------------------------------------------------------------------


def recipes_dir():
    """Returns the folder of the recipe TOML files.

    `$KERAS_RPAT_RECIPES` if set, else the repository's top-level `recipes/`
    folder (next to the `keras_rpat` package).
    """
    env = os.environ.get(RECIPES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "recipes"


def list_recipes():
    """Returns the names of the available recipes (sorted).

    Example:

    >>> keras_rpat.recipes.list_recipes()
    ['figure2', 'figure4', 'figure5', 'table1', 'table2', 'table3', 'table4', 'table5', 'table6']
    """
    folder = recipes_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml") if not p.name.startswith("."))


def _toml_load(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise ImportError(
                "Reading recipes needs `tomllib` (Python >= 3.11) or the `tomli` package "
                "on Python 3.10: `pip install tomli`."
            ) from e
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"{path}: not valid TOML: {e}") from None


def load_recipe(name):
    """Reads and validates a recipe.

    Args:
        name: a recipe name from `list_recipes()` (e.g. `"table3"`), or a
            path to a `.toml` file.

    Returns:
        A `Recipe`.

    Raises:
        RecipeError: if the recipe does not exist (the message lists the
            available ones) or a field is invalid.

    Example:

    >>> recipe = keras_rpat.recipes.load_recipe("table3")
    >>> len(recipe.runs())
    24
    """
    raw = os.fspath(name)
    if raw.endswith(".toml"):
        path = Path(raw)
        if not path.is_file():
            raise RecipeError(f"Recipe file not found: {raw}")
    else:
        key = raw.strip().lower()
        path = recipes_dir() / f"{key}.toml"
        if not path.is_file():
            available = list_recipes()
            raise RecipeError(
                f"Unknown recipe {raw!r}. Available recipes: {', '.join(available) or '(none)'} "
                f"(in {recipes_dir()}; set ${RECIPES_ENV} to use another folder)."
            )
    return Recipe.from_dict(_toml_load(path), path=path)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _err(where, message):
    raise RecipeError(f"{where}: {message}")


def _check_keys(where, data, allowed, required=()):
    if not isinstance(data, dict):
        _err(where, f"expected a table. Received: {data!r}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        _err(where, f"unknown field(s) {unknown}. Valid fields: {sorted(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        _err(where, f"missing required field(s) {missing}")


def _str(where, value, name, choices=None):
    if not isinstance(value, str) or not value.strip():
        _err(where, f"`{name}` must be a non-empty string. Received: {name}={value!r}")
    if choices is not None and value not in choices:
        _err(where, f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")
    return value


def _int(where, value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _err(where, f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _number(where, value, name, minimum=None, strict=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _err(where, f"`{name}` must be a number. Received: {name}={value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        _err(where, f"`{name}` must be {bound}. Received: {name}={value!r}")
    return float(value)


def _list(where, value, name, item, allow_empty=False):
    if not isinstance(value, list) or (not value and not allow_empty):
        _err(where, f"`{name}` must be a {'' if allow_empty else 'non-empty '}list. Received: {name}={value!r}")
    out = [item(v) for v in value]
    if len(set(map(repr, out))) != len(out):
        _err(where, f"`{name}` has duplicate entries: {value!r}")
    return out


def _fraction(where, value, name):
    from keras_rpat.attacks import parse_epsilon

    try:
        number = parse_epsilon(value, name)
    except ValueError as e:
        _err(where, str(e))
    if not number > 0:
        _err(where, f"`{name}` must be > 0. Received: {name}={value!r}")
    return number


def _canonical_arch(value):
    from keras_rpat import models

    return models.canonical_name(value)


def _canonical_preset(value):
    from keras_rpat import presets

    return presets.canonical_name(value)


def _canonical_norm(value):
    from keras_rpat.attacks import _canonical_norm

    return _canonical_norm(value)


def _key(text):
    return str(text).strip().lower().replace("-", "").replace("_", "").replace(" ", "")


# ---------------------------------------------------------------------------
# Recipe
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Method:
    """One row of a recipe: a preset with options.

    Attributes:
        id: unique name within the recipe (used in `--method` and paths).
        preset: a `keras_rpat.presets` name (`"pgd_at+rpat"`, `"rebat"`...).
        label: the paper's name for the row (`"RPAT++*"`).
        row: the row label in the Markdown table (default `label`).
        group: column group or panel (e.g. `"+RPAT"`, `"(a) regulariser"`).
        options: run options (`cutmix`, `lr_factor`, `beta`,
            `stronger_attack`, `proxy`, `distance`, `alpha`, `alpha_sampling`,
            `rp_weight`, `l2_step_size`).
        perturbation: perception-analysis perturbation (`"random"` or
            `"pgd20"`) for Figures 2 and 5.
        expect: the expected pattern (`"failure > success"` or
            `"failure < success"`) for Figures 2 and 5.
    """

    id: str
    preset: str
    label: str
    row: str
    group: str = ""
    options: dict = dataclasses.field(default_factory=dict)
    perturbation: str = None
    expect: str = None


@dataclasses.dataclass
class RunSpec:
    """One training run of a recipe (or of `keras-rpat train`).

    Attributes:
        recipe: the recipe name (`"train"` for a single run).
        method: the method id (directory name); `methods` lists every recipe
            method this run serves (methods that differ only by spelling out
            a default share one run).
        preset: the `keras_rpat.presets` name.
        options: the run options that differ from the preset's defaults.
        dataset, arch, norm, seed: what is trained.
        stem_stride: stride of the model's first convolution (2 for 64x64
            Tiny-ImageNet).
        epochs, batch_size: the schedule length and training batch size.
        eval_attacks: evaluations of the checkpoints (`"clean"`, `"pgd20"`,
            `"autoattack"`).
        checkpoints: which checkpoints are evaluated (`"best"`, `"final"`).
        autoattack_version: AutoAttack version (`"standard"`).
        select_steps: steps of the per-epoch PGD that selects the best
            checkpoint.
        l2_step_size: L2 attack step (32/255 by default).
        perception: perception-analysis settings (Figures 2 and 5) or None.
        perturbation: the perception perturbation of this run.
        smoke: tiny synthetic smoke run.
        fingerprint: the configuration fingerprint of the output folder.
        run_dir: the run's folder relative to the output folder.
    """

    recipe: str
    method: str
    methods: tuple
    preset: str
    label: str
    options: dict
    dataset: str
    arch: str
    norm: str
    seed: int
    stem_stride: int
    epochs: int
    batch_size: int
    eval_attacks: tuple
    checkpoints: tuple
    autoattack_version: str = "standard"
    select_steps: int = 10
    l2_step_size: float = 32 / 255
    perception: dict = None
    perturbation: str = None
    smoke: bool = False
    fingerprint: dict = dataclasses.field(default_factory=dict)
    run_dir: str = ""

    def to_dict(self):
        """The run as a JSON-serialisable dict."""
        out = dataclasses.asdict(self)
        out["methods"] = list(self.methods)
        out["eval_attacks"] = list(self.eval_attacks)
        out["checkpoints"] = list(self.checkpoints)
        return out

    def run_fingerprint(self):
        """What identifies the results of this run (everything but labels)."""
        d = self.to_dict()
        for k in ("label", "methods", "run_dir"):
            d.pop(k)
        return d

    def describe(self):
        """A one-line description."""
        opts = "".join(f" {k}={v}" for k, v in sorted(self.options.items()))
        what = self.method if self.method == self.preset and not opts else f"{self.method} ({self.preset}{opts})"
        return (
            f"{what} {self.dataset} {self.arch} {self.norm} "
            f"seed {self.seed}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}"
            + (" [smoke]" if self.smoke else "")
        )


@dataclasses.dataclass
class Recipe:
    """A validated recipe (see the module docstring and `recipes/*.toml`).

    Attributes:
        name, title, paper, caption, kind, notes: descriptive fields.
        config: the flat configuration (a dict, validated).
        methods: list of `Method`.
        layout: how the Markdown table is laid out (`rows`, `groups`,
            `columns`).
        paper_results: the paper's numbers per row (dicts with `method`,
            optional `dataset` / `arch` / `norm`, and metrics).
        literature: rows copied from the paper and not re-run.
        path: the TOML file.
    """

    name: str
    title: str
    paper: str
    caption: str
    kind: str
    notes: list
    config: dict
    methods: list
    layout: dict
    paper_results: list
    literature: list
    path: Path = None

    # ------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, data, path=None):
        """Validates a parsed TOML document and returns a `Recipe`."""
        where = str(path) if path is not None else "recipe"
        _check_keys(where, data, _TOP_KEYS, required=("name", "title", "paper", "caption", "kind", "config", "methods"))
        name = _str(where, data["name"], "name")
        if path is not None and Path(path).stem != name:
            _err(where, f"`name` must equal the file name {Path(path).stem!r}. Received: name={name!r}")
        kind = _str(where, data["kind"], "kind", KINDS)
        notes = data.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            _err(where, f"`notes` must be a list of strings. Received: notes={notes!r}")
        config = cls._validate_config(f"{where} [config]", data["config"])
        methods = cls._validate_methods(where, data["methods"], config)
        layout = cls._validate_layout(f"{where} [layout]", data.get("layout", {}), methods)
        recipe = cls(
            name=name,
            title=_str(where, data["title"], "title"),
            paper=_str(where, data["paper"], "paper"),
            caption=_str(where, data["caption"], "caption"),
            kind=kind,
            notes=list(notes),
            config=config,
            methods=methods,
            layout=layout,
            paper_results=[],
            literature=[],
            path=None if path is None else Path(path),
        )
        recipe.paper_results = recipe._validate_results(where, data.get("paper_results", []), "paper_results")
        recipe.literature = recipe._validate_results(where, data.get("literature", []), "literature")
        recipe._check_layout_unique(where)
        return recipe

    @staticmethod
    def _validate_config(where, config):
        _check_keys(
            where,
            config,
            _CONFIG_KEYS,
            required=("datasets", "archs", "norms", "epochs", "batch_size", "pipeline", "seeds", "eval_attacks", "checkpoints", "tolerance"),
        )
        out = {}
        out["datasets"] = _list(where, config["datasets"], "datasets", lambda v: _str(where, v, "datasets", DATASETS))

        def arch(v):
            try:
                return _canonical_arch(_str(where, v, "archs"))
            except ValueError as e:
                _err(where, str(e))

        out["archs"] = _list(where, config["archs"], "archs", arch)

        def norm(v):
            try:
                return _canonical_norm(_str(where, v, "norms"))
            except ValueError as e:
                _err(where, str(e))

        out["norms"] = _list(where, config["norms"], "norms", norm)
        if "setups" in config:

            def setup(v):
                _check_keys(f"{where} setups", v, ("dataset", "arch", "stem_stride"), required=("dataset", "arch"))
                s = {"dataset": _str(where, v["dataset"], "setups.dataset", out["datasets"]), "arch": arch(v["arch"])}
                if s["arch"] not in out["archs"]:
                    _err(where, f"`setups` uses arch {s['arch']!r}, which is not in `archs` {out['archs']}")
                if "stem_stride" in v:
                    s["stem_stride"] = _int(where, v["stem_stride"], "setups.stem_stride")
                return s

            out["setups"] = _list(where, config["setups"], "setups", setup)
        else:
            out["setups"] = [{"dataset": d, "arch": a} for d in out["datasets"] for a in out["archs"]]
        for s in out["setups"]:
            s.setdefault("stem_stride", 2 if s["dataset"] == "tiny_imagenet" else 1)
        out["epochs"] = _int(where, config["epochs"], "epochs")
        out["batch_size"] = _int(where, config["batch_size"], "batch_size")
        out["pipeline"] = _str(where, config["pipeline"], "pipeline", ("bench", "sotas"))
        out["seeds"] = _list(where, config["seeds"], "seeds", lambda v: _int(where, v, "seeds", minimum=0))
        if "lr_schedule" in config:
            out["lr_schedule"] = _str(where, config["lr_schedule"], "lr_schedule", ("multistep", "piecewise"))
        if "lr_milestones" in config:
            out["lr_milestones"] = _list(where, config["lr_milestones"], "lr_milestones", lambda v: _int(where, v, "lr_milestones", 0))
        if "lr_factor" in config:
            out["lr_factor"] = _number(where, config["lr_factor"], "lr_factor", 1.0, strict=False)
        from keras_rpat.evaluation import EVALUATION_ATTACKS

        out["eval_attacks"] = _list(where, config["eval_attacks"], "eval_attacks", lambda v: _str(where, v, "eval_attacks", EVALUATION_ATTACKS))
        out["autoattack_version"] = _str(
            where, config.get("autoattack_version", "standard"), "autoattack_version", _AA_VERSIONS
        )
        out["checkpoints"] = _list(where, config["checkpoints"], "checkpoints", lambda v: _str(where, v, "checkpoints", CHECKPOINTS))
        if "reported_model" in config:
            out["reported_model"] = _str(where, config["reported_model"], "reported_model", ("online", "wa"))
        out["select_steps"] = _int(where, config.get("select_steps", 10), "select_steps")
        out["l2_step_size"] = _fraction(where, config.get("l2_step_size", "32/255"), "l2_step_size")
        out["tolerance"] = _number(where, config["tolerance"], "tolerance", 0.0)
        perception = config.get("perception")
        if perception is not None:
            pw = f"{where} perception"
            _check_keys(pw, perception, ("epsilon", "step_size", "num_steps", "checkpoint"))
            out["perception"] = {
                "epsilon": _fraction(pw, perception.get("epsilon", "8/255"), "epsilon"),
                "step_size": _fraction(pw, perception.get("step_size", "2/255"), "step_size"),
                "num_steps": _int(pw, perception.get("num_steps", 20), "num_steps"),
                "checkpoint": _str(pw, perception.get("checkpoint", "final"), "checkpoint", CHECKPOINTS),
            }
            if out["perception"]["checkpoint"] not in out["checkpoints"]:
                _err(pw, f"`checkpoint` {out['perception']['checkpoint']!r} is not in `checkpoints` {out['checkpoints']}")
        else:
            out["perception"] = None
        return out

    @staticmethod
    def _validate_methods(where, methods, config):
        from keras_rpat import losses as losses_lib
        from keras_rpat import presets

        if not isinstance(methods, list) or not methods:
            _err(where, "`methods` must be a non-empty list of [[methods]] tables.")
        out = []
        seen = set()
        for i, m in enumerate(methods):
            mw = f"{where} methods[{i}]"
            _check_keys(mw, m, _METHOD_KEYS, required=("id", "preset", "label"))
            mid = _str(mw, m["id"], "id")
            if mid in seen:
                _err(mw, f"duplicate method id {mid!r}")
            if any(c in mid for c in "/\\ ") or mid.startswith("."):
                _err(mw, f"`id` must be usable as a folder name (no '/', '\\', spaces or leading '.'). Received: id={mid!r}")
            seen.add(mid)
            try:
                preset_name = _canonical_preset(_str(mw, m["preset"], "preset"))
            except ValueError as e:
                _err(mw, str(e))
            label = _str(mw, m["label"], "label")
            options = dict(m.get("options", {}))
            if not isinstance(m.get("options", {}), dict):
                _err(mw, f"`options` must be a table. Received: {m['options']!r}")
            unknown = sorted(set(options) - set(_OPTION_TYPES))
            if unknown:
                _err(mw, f"unknown option(s) {unknown}. Valid options: {sorted(_OPTION_TYPES)}")
            for key, value in options.items():
                kind = _OPTION_TYPES[key]
                if kind is bool and not isinstance(value, bool):
                    _err(mw, f"option `{key}` must be true or false. Received: {value!r}")
                if kind is float:
                    options[key] = _number(mw, value, key)
                if kind is str:
                    _str(mw, value, key)
            base = preset_name[: -len("+rpat")] if preset_name.endswith("+rpat") else preset_name
            rp = preset_name.endswith("+rpat")
            sota = base in presets.SOTA_METHODS
            for key in options:
                if key in _RP_OPTIONS and not rp:
                    _err(mw, f"option `{key}` configures the RobustPerception term, but preset {preset_name!r} has none (use a '+rpat' preset).")
                if key in ("cutmix", "stronger_attack", "beta") and not sota:
                    _err(mw, f"option `{key}` applies to the ReBAT / RPAT++ presets only. Received preset {preset_name!r}.")
                if key == "lr_factor" and not sota:
                    _err(mw, f"option `lr_factor` applies to the piecewise schedule of ReBAT / RPAT++ only. Received preset {preset_name!r}.")
            for key, valid in (("proxy", losses_lib.PROXIES), ("distance", losses_lib.DISTANCES), ("alpha_sampling", losses_lib.ALPHA_SAMPLING)):
                if key in options and options[key] not in valid:
                    _err(mw, f"option `{key}` must be one of {list(valid)}. Received: {options[key]!r}")
            if "alpha" in options and not 0.0 < options["alpha"] < 1.0:
                _err(mw, f"option `alpha` (weight on the perturbation) must be in (0, 1). Received: {options['alpha']}")
            if "stronger_attack" in options and options["stronger_attack"] and "linf" not in config["norms"]:
                _err(mw, "option `stronger_attack` is defined for the L-inf threat model only (Table 6).")
            if "l2_step_size" in options:
                options["l2_step_size"] = _fraction(mw, options["l2_step_size"], "l2_step_size")
            if "lr_factor" in options and options["lr_factor"] < 1.0:
                _err(mw, f"option `lr_factor` must be >= 1. Received: {options['lr_factor']}")
            # The preset decides the pipeline, schedule and model type: the
            # recipe's descriptive fields must agree with it.
            preset = presets.get(preset_name, norm=config["norms"][0], stronger_attack=False)
            for field, recipe_key in (("pipeline", "pipeline"), ("epochs", "epochs"), ("schedule", "lr_schedule")):
                if recipe_key in config and getattr(preset, field) != config[recipe_key]:
                    _err(
                        mw,
                        f"preset {preset_name!r} uses {field}={getattr(preset, field)!r} but the recipe's "
                        f"`{recipe_key}` is {config[recipe_key]!r}. Keep the preset's value (use --epochs "
                        "to shorten a run).",
                    )
            if "lr_milestones" in config and list(preset.milestones) != config["lr_milestones"]:
                _err(mw, f"preset {preset_name!r} decays the learning rate at epochs {list(preset.milestones)}, the recipe says {config['lr_milestones']}.")
            if "lr_factor" in config and preset.schedule == "piecewise" and preset.lr_factor != config["lr_factor"]:
                _err(mw, f"preset {preset_name!r} uses lr_factor={preset.lr_factor}, the recipe says {config['lr_factor']}.")
            if "reported_model" in config:
                wa = preset.weight_averaging is not None and preset.weight_averaging.evaluate_average
                if (config["reported_model"] == "wa") != wa:
                    _err(mw, f"the recipe reports the {config['reported_model']!r} model, but preset {preset_name!r} {'has' if wa else 'has no'} weight averaging.")
            perturbation = m.get("perturbation")
            if perturbation is not None:
                from keras_rpat.evaluation import PERTURBATIONS

                _str(mw, perturbation, "perturbation", PERTURBATIONS)
                if config["perception"] is None:
                    _err(mw, "`perturbation` needs a [config.perception] table.")
            elif config["perception"] is not None:
                _err(mw, "the recipe has [config.perception]: every method needs a `perturbation` ('random' or 'pgd20').")
            expect = m.get("expect")
            if expect is not None:
                _str(mw, expect, "expect", _EXPECTATIONS)
            out.append(
                Method(
                    id=mid,
                    preset=preset_name,
                    label=label,
                    row=_str(mw, m.get("row", label), "row"),
                    group=m.get("group", "") if isinstance(m.get("group", ""), str) else _err(mw, "`group` must be a string."),
                    options=options,
                    perturbation=perturbation,
                    expect=expect,
                )
            )
        return out

    @staticmethod
    def _validate_layout(where, layout, methods):
        _check_keys(where, layout, ("rows", "groups", "columns"))
        default_columns = ["mse_success", "mse_failure", "clean_acc", "perturbed_acc"] if any(m.perturbation for m in methods) else ["clean_best", "aa_best", "mean", "nrr"]
        rows = layout.get("rows", ["row"])
        rows = _list(where, rows, "rows", lambda v: _str(where, v, "rows", LAYOUT_DIMS))
        groups = layout.get("groups")
        if groups is not None:
            _str(where, groups, "groups", LAYOUT_DIMS)
            if groups in rows:
                _err(where, f"`groups` {groups!r} is also in `rows` {rows}")
        columns = layout.get("columns", default_columns)
        metric = lambda v: _str(where, v, "columns", METRICS)  # noqa: E731
        if isinstance(columns, dict):
            if groups != "group":
                _err(where, "per-group `columns` (a table) need `groups = \"group\"`.")
            names = [m.group for m in methods]
            unknown = sorted(set(columns) - set(names))
            if unknown:
                _err(where, f"`columns` names unknown group(s) {unknown}; the method groups are {sorted(set(names))}")
            columns = {g: _list(where, c, f"columns.{g}", metric) for g, c in columns.items()}
            missing = sorted(set(names) - set(columns))
            if missing:
                _err(where, f"`columns` has no entry for group(s) {missing}")
        else:
            columns = _list(where, columns, "columns", metric)
        return {"rows": rows, "groups": groups, "columns": columns}

    def _validate_results(self, where, entries, field):
        if not isinstance(entries, list):
            _err(where, f"`{field}` must be a list of [[{field}]] tables.")
        out = []
        seen = set()
        ids = [m.id for m in self.methods]
        for i, entry in enumerate(entries):
            ew = f"{where} {field}[{i}]"
            keys = ("method",) if field == "paper_results" else ("label", "venue")
            _check_keys(ew, entry, keys + ("dataset", "arch", "norm") + METRICS, required=keys[:1])
            row = {}
            if field == "paper_results":
                row["method"] = _str(ew, entry["method"], "method", ids)
            else:
                row["label"] = _str(ew, entry["label"], "label")
                if "venue" in entry:
                    row["venue"] = _str(ew, entry["venue"], "venue")
            if "dataset" in entry:
                row["dataset"] = _str(ew, entry["dataset"], "dataset", self.config["datasets"])
            if "arch" in entry:
                try:
                    row["arch"] = _canonical_arch(entry["arch"])
                except ValueError as e:
                    _err(ew, str(e))
                if row["arch"] not in self.config["archs"]:
                    _err(ew, f"`arch` must be one of {self.config['archs']}. Received: {entry['arch']!r}")
            if "norm" in entry:
                row["norm"] = _str(ew, entry["norm"], "norm", self.config["norms"])
            metrics = {k: _number(ew, entry[k], k, 0.0) for k in METRICS if k in entry}
            if not metrics:
                _err(ew, f"no metric given; expected some of {list(METRICS)}")
            row.update(metrics)
            ident = tuple(row.get(k) for k in ("method", "label", "dataset", "arch", "norm"))
            if ident in seen:
                _err(ew, f"duplicate entry for {dict(zip(('method', 'label', 'dataset', 'arch', 'norm'), ident))}")
            seen.add(ident)
            out.append(row)
        return out

    def _check_layout_unique(self, where):
        cells = {}
        for entry in self.entries():
            key = (self._row_key(entry), self._group_key(entry))
            if key in cells:
                _err(
                    f"{where} [layout]",
                    f"rows {self.layout['rows']} and groups {self.layout['groups']!r} put "
                    f"{cells[key]} and {entry} in the same cell; add a dimension to `rows`.",
                )
            cells[key] = entry

    # ------------------------------------------------------------ accessors
    @property
    def epochs(self):
        return self.config["epochs"]

    @property
    def seeds(self):
        return list(self.config["seeds"])

    @property
    def datasets(self):
        return list(self.config["datasets"])

    @property
    def archs(self):
        return list(self.config["archs"])

    @property
    def norms(self):
        return list(self.config["norms"])

    @property
    def tolerance(self):
        return self.config["tolerance"]

    def method(self, method_id):
        """Returns the `Method` with this id."""
        for m in self.methods:
            if m.id == method_id:
                return m
        raise RecipeError(f"Recipe {self.name!r} has no method {method_id!r}. Methods: {[m.id for m in self.methods]}")

    def entries(self):
        """Every (method, dataset, arch, norm) cell of the recipe, in order."""
        out = []
        for m in self.methods:
            for s in self.config["setups"]:
                for n in self.config["norms"]:
                    out.append({"method": m.id, "dataset": s["dataset"], "arch": s["arch"], "norm": n, "row": m.row, "group": m.group})
        return out

    def _row_key(self, entry):
        return tuple(entry[d] for d in self.layout["rows"])

    def _group_key(self, entry):
        g = self.layout["groups"]
        return None if g is None else entry[g]

    def config_sha256(self):
        """SHA-256 of the configuration and methods (not of the paper's numbers)."""
        payload = {"config": self.config, "methods": [dataclasses.asdict(m) for m in self.methods]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def fingerprint(self, epochs=None, batch_size=None, smoke=False):
        """The configuration an output folder's results belong to."""
        return {
            "recipe": self.name,
            "config_sha256": self.config_sha256(),
            "epochs": int(epochs or (SMOKE["epochs"] if smoke else self.epochs)),
            "batch_size": int(batch_size or (SMOKE["batch_size"] if smoke else self.config["batch_size"])),
            "smoke": bool(smoke),
        }

    # ------------------------------------------------------------ run plan
    def _narrow(self, name, values, valid, canonical):
        if values is None:
            return list(valid)
        if isinstance(values, str):
            values = [v for v in values.replace(" ", "").split(",") if v]
        chosen = []
        for v in values:
            try:
                c = canonical(v)
            except RecipeError:
                raise
            except ValueError as e:
                raise RecipeError(f"Invalid --{name} {v!r}: {e}") from None
            if isinstance(c, list):
                matches = c
            else:
                matches = [c] if c in valid else []
            if not matches:
                alias = f" ({c})" if isinstance(c, str) and c != v else ""
                raise RecipeError(f"Recipe {self.name!r} has no {name} {v!r}{alias}. Valid: {', '.join(map(str, valid))}.")
            for c in matches:
                if c not in chosen:
                    chosen.append(c)
        return [v for v in valid if v in chosen]

    def _match_method(self, value):
        key = _key(value)
        exact = [m.id for m in self.methods if m.id == value or _key(m.id) == key]
        if exact:
            return exact
        label = [m.id for m in self.methods if _key(m.label) == key]
        if label:
            return label
        try:
            preset = _canonical_preset(value)
        except ValueError:
            preset = None
        by_preset = [m.id for m in self.methods if m.preset == preset]
        if by_preset:
            return by_preset
        raise RecipeError(
            f"Recipe {self.name!r} has no method {value!r}. Valid methods: "
            + ", ".join(f"{m.id} ({m.label})" for m in self.methods)
            + "; a preset name selects every method built on it."
        )

    def runs(self, dataset=None, arch=None, norm=None, method=None, seeds=None, epochs=None, smoke=False, batch_size=None):
        """The run plan: one `RunSpec` per method, setup, norm and seed.

        Narrowing arguments take one value, a list, or a comma-separated
        string; each is checked against what the recipe contains.

        Args:
            dataset: keep these datasets (`"cifar10"`; `"CIFAR-10"` works).
            arch: keep these architectures (aliases such as
                `"preactresnet18"` work).
            norm: keep these norms (`"linf"`, `"l2"`).
            method: keep these methods: a method id, the paper's label
                (`"RPAT++*"`) or a preset name (all methods built on it).
            seeds: the seeds to run (default: the recipe's, `[0, 1, 2]`;
                the first one only with `smoke=True`).
            epochs: train for this many epochs instead of the paper's; the
                learning-rate milestones and start epochs scale with it.
            smoke: tiny synthetic smoke runs (1 epoch unless `epochs`).
            batch_size: training batch size (default: the recipe's; 32 in
                smoke mode).

        Returns:
            A list of `RunSpec`, seed-major (all runs of the first seed come
            first, so a complete table with one seed exists early).
        """
        datasets = self._narrow("dataset", dataset, self.datasets, lambda v: next((d for d in DATASETS if _key(d) == _key(v)), _key(v)))
        archs = self._narrow("arch", arch, self.archs, _canonical_arch)
        norms = self._narrow("norm", norm, self.norms, _canonical_norm)
        method_ids = self._narrow("method", method, [m.id for m in self.methods], self._match_method)
        if seeds is None:
            seeds = self.seeds[:1] if smoke else self.seeds
        elif isinstance(seeds, str):
            seeds = _parse_seeds(seeds)
        seeds = list(seeds)
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise RecipeError(f"Seeds must be non-negative integers. Received: {seeds!r}")
        if not seeds or len(set(seeds)) != len(seeds):
            raise RecipeError(f"Seeds must be a non-empty list without duplicates. Received: {seeds!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise RecipeError(f"`epochs` must be a positive integer. Received: epochs={epochs!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise RecipeError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        setups = [s for s in self.config["setups"] if s["dataset"] in datasets and s["arch"] in archs]
        if not setups:
            raise RecipeError(
                f"No setup of recipe {self.name!r} matches dataset={datasets} and arch={archs}. Setups: "
                + ", ".join(f"{s['dataset']}/{s['arch']}" for s in self.config["setups"])
            )
        fingerprint = self.fingerprint(epochs, batch_size, smoke)
        run_epochs = fingerprint["epochs"]
        run_batch = fingerprint["batch_size"]
        out = []
        for seed in seeds:
            for setup in setups:
                for n in norms:
                    planned = {}
                    for mid in method_ids:
                        m = self.method(mid)
                        options = _canonical_options(m, n)
                        key = (m.preset, json.dumps(options, sort_keys=True), m.perturbation)
                        if key in planned:
                            planned[key].methods += (m.id,)
                            continue
                        spec = RunSpec(
                            recipe=self.name,
                            method=m.id,
                            methods=(m.id,),
                            preset=m.preset,
                            label=m.label,
                            options=options,
                            dataset=setup["dataset"],
                            arch=setup["arch"],
                            norm=n,
                            seed=int(seed),
                            stem_stride=int(setup["stem_stride"]),
                            epochs=run_epochs,
                            batch_size=run_batch,
                            eval_attacks=tuple(self.config["eval_attacks"]),
                            checkpoints=tuple(self.config["checkpoints"]),
                            autoattack_version=self.config["autoattack_version"],
                            select_steps=self.config["select_steps"],
                            l2_step_size=options.get("l2_step_size", self.config["l2_step_size"]),
                            perception=copy.deepcopy(self.config["perception"]),
                            perturbation=m.perturbation,
                            smoke=bool(smoke),
                            fingerprint=dict(fingerprint),
                            run_dir=f"{m.id}/{setup['dataset']}-{setup['arch']}-{n}/seed{seed}",
                        )
                        planned[key] = spec
                        out.append(spec)
        return out

    # ------------------------------------------------------------ display
    def describe(self):
        """The recipe as text: configuration, methods and the paper's numbers."""
        lines = [f"{self.name}: {self.title}", f"Paper: {self.paper}. {self.caption}", ""]
        lines.append("Configuration:")
        for key in _CONFIG_KEYS:
            if key in self.config and self.config[key] is not None:
                value = self.config[key]
                if key == "l2_step_size":
                    value = f"{value * 255:.4g}/255"
                if key == "setups":
                    value = ", ".join(f"{s['dataset']}/{s['arch']} (stem stride {s['stem_stride']})" for s in value)
                lines.append(f"  {key}: {value}")
        lines.append("")
        lines.append("Methods:")
        for m in self.methods:
            extra = "".join(f" {k}={v}" for k, v in m.options.items())
            if m.perturbation:
                extra += f" perturbation={m.perturbation}"
            if m.expect:
                extra += f" expect: {m.expect}"
            group = f" [{m.group}]" if m.group else ""
            lines.append(f"  {m.id}: {m.label}{group} = preset {m.preset}{extra}")
        if self.paper_results:
            lines.append("")
            lines.append(f"Paper's numbers (tolerance {self.tolerance:g} pp):")
            for r in self.paper_results:
                lines.append("  " + _format_result_line(r, self))
        if self.literature:
            lines.append("")
            lines.append("Literature rows (not re-run):")
            for r in self.literature:
                lines.append("  " + _format_result_line(r, self))
        if self.notes:
            lines.append("")
            lines.append("Notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines)


def _format_result_line(r, recipe):
    head = r.get("method") or r.get("label")
    venue = f" ({r['venue']})" if r.get("venue") else ""
    where = "".join(f" {r[k]}" for k in ("dataset", "arch", "norm") if k in r)
    values = ", ".join(f"{METRIC_LABELS[k]} {r[k]:g}" for k in METRICS if k in r)
    return f"{head}{venue}{where}: {values}"


def _parse_seeds(text):
    try:
        return [int(s) for s in str(text).replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise RecipeError(f"Seeds must be comma-separated integers such as 0,1,2. Received: {text!r}") from None


def _canonical_options(method, norm):
    """Options without the values the preset uses anyway."""
    from keras_rpat import presets

    defaults = {
        "cutmix": False,
        "stronger_attack": False,
        "proxy": "logits",
        "distance": "mse",
        "alpha": 0.5,
        "alpha_sampling": "fixed",
        "rp_weight": 1.0,
    }
    preset = presets.get(method.preset, norm=norm)
    if preset.schedule == "piecewise":
        defaults["lr_factor"] = preset.lr_factor
    for loss in preset.losses:
        if hasattr(loss, "beta") and type(loss).__name__ in ("BoAT", "RPATPlusPlus"):
            defaults["beta"] = loss.beta
    out = {}
    for key, value in method.options.items():
        if key == "l2_step_size" and norm != "l2":
            continue
        if key in defaults and defaults[key] == value:
            continue
        out[key] = value
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# Building a run
# ---------------------------------------------------------------------------


def build_preset(spec):
    """The `keras_rpat.presets.Preset` of a run, options and epochs applied."""
    from keras_rpat import losses as losses_lib
    from keras_rpat import presets

    opts = spec.options
    preset = presets.get(
        spec.preset,
        norm=spec.norm,
        l2_step_size=spec.l2_step_size if spec.norm == "l2" else None,
        stronger_attack=bool(opts.get("stronger_attack", False)),
    )
    if "lr_factor" in opts:
        preset.lr_factor = float(opts["lr_factor"])
    new_losses = []
    for loss in preset.losses:
        config = loss.get_config()
        if isinstance(loss, losses_lib.RobustPerception):
            for key, arg in _RP_OPTIONS.items():
                if key in opts:
                    config[arg] = opts[key]
            loss = losses_lib.RobustPerception.from_config(config)
        elif isinstance(loss, (losses_lib.BoAT, losses_lib.RPATPlusPlus)) and "beta" in opts:
            config["beta"] = float(opts["beta"])
            loss = type(loss).from_config(config)
        new_losses.append(loss)
    preset.losses = new_losses
    if spec.smoke and preset.attack is not None and hasattr(preset.attack, "num_steps"):
        preset.attack.num_steps = SMOKE["train_steps"]
        if preset.attack.schedule:
            for overrides in preset.attack.schedule.values():
                if "num_steps" in overrides:
                    overrides["num_steps"] = SMOKE["train_steps"]
    if spec.epochs != preset.epochs:
        preset = preset.with_epochs(spec.epochs)
    return preset


def _load_dataset(spec, data_dir, cache):
    from keras_rpat import datasets

    if spec.smoke:
        key = ("synthetic", SMOKE["n_train"], SMOKE["n_test"], SMOKE["image_size"])
        if key not in cache:
            cache[key] = datasets.load(
                "synthetic",
                n_train=SMOKE["n_train"],
                n_test=SMOKE["n_test"],
                num_classes=SMOKE["num_classes"],
                image_size=SMOKE["image_size"],
            )
        return cache[key]
    key = (spec.dataset, None if data_dir is None else os.fspath(data_dir))
    if key not in cache:
        cache[key] = datasets.load(spec.dataset, data_dir=data_dir)
    return cache[key]


def _build_model(spec, preset, ds):
    from keras_rpat import models

    if spec.smoke:
        return models.get(
            "small_cnn",
            num_classes=ds.num_classes,
            input_shape=ds.image_shape,
            stem_stride=spec.stem_stride,
            normalize=preset.normalize,
            widths=SMOKE["widths"],
        )
    return models.get(
        spec.arch,
        num_classes=ds.num_classes,
        input_shape=ds.image_shape,
        stem_stride=spec.stem_stride,
        normalize=preset.normalize,
    )


def _threat(spec, preset):
    """(norm, epsilon, step_size) of the run's evaluation."""
    from keras_rpat.presets import BUDGETS

    budget = BUDGETS[spec.norm]
    step = spec.l2_step_size if spec.norm == "l2" else budget["step_size"]
    attack = preset.attack
    if attack is not None and getattr(attack, "norm", None) == spec.norm and hasattr(attack, "step_size"):
        step = attack.step_size
    return spec.norm, budget["epsilon"], step


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _resolved_config(spec, preset, model, ds, train_seq, eval_settings):
    from keras_rpat import attacks as attacks_lib

    return _jsonable(
        {
            "preset": {
                "name": preset.name,
                "description": preset.describe(),
                "attack": attacks_lib.serialize(preset.attack),
                "losses": [{"class": type(l).__name__, **l.get_config()} for l in preset.losses],
                "weight_averaging": None if preset.weight_averaging is None else preset.weight_averaging.get_config(),
                "post_step_clean_forward": preset.post_step_clean_forward,
                "pipeline": preset.pipeline,
                "two_view": preset.two_view,
                "epochs": preset.epochs,
                "schedule": preset.schedule,
                "milestones": list(preset.milestones),
                "lr_factor": preset.lr_factor,
                "learning_rate": preset.learning_rate,
                "momentum": preset.momentum,
                "weight_decay": preset.weight_decay,
                "normalize": preset.normalize,
            },
            "model": {
                "arch": "small_cnn" if spec.smoke else spec.arch,
                "paper_arch": spec.arch,
                "num_classes": ds.num_classes,
                "input_shape": list(ds.image_shape),
                "stem_stride": spec.stem_stride,
                "normalize": preset.normalize,
                "params": int(model.count_params()),
            },
            "data": {
                "dataset": "synthetic" if spec.smoke else spec.dataset,
                "paper_dataset": spec.dataset,
                "n_train": int(len(ds.x_train)),
                "n_test": int(len(ds.x_test)),
                "batch_size": spec.batch_size,
                "steps_per_epoch": len(train_seq),
                "cutmix": bool(spec.options.get("cutmix", False)),
            },
            "evaluation": eval_settings,
        }
    )


class _EpochLog(keras.callbacks.Callback):
    """Keeps Keras' per-epoch logs in a JSON file that survives a resume."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.records = []
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first:
            self._first = False
            self.records = _read_json(self.path) or []
            self.records = [r for r in self.records if r["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        from keras_rpat.evaluation import _atomic_write_json

        record = {"epoch": epoch + 1}
        for k, v in (logs or {}).items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            record[k] = v if math.isfinite(v) else None
        self.records = [r for r in self.records if r["epoch"] != epoch + 1] + [record]
        _atomic_write_json(self.path, self.records)


class _AttackRandomState(keras.callbacks.Callback):
    """Backs up and restores the attacks' random state with the training state.

    `BackupAndRestore` saves the trainer's variables, but an attack is a plain
    object and its `SeedGenerator` (random starts, random noise) is not among
    them. This callback writes it next to the backup after every epoch and
    restores it when training resumes from the same epoch, so a resumed run
    repeats the uninterrupted one exactly. On torch, keras_rpat draws random
    numbers from a device-side generator kept by the backend module; its state
    is saved too when the backend offers `get_random_state` /
    `set_random_state` (otherwise a resumed torch run is statistically, not
    bitwise, identical to an uninterrupted one).
    """

    def __init__(self, backup_dir):
        super().__init__()
        self.path = os.path.join(backup_dir, "attack_random_state.json")
        self.metadata = os.path.join(backup_dir, "training_metadata.json")

    def _generators(self):
        out = {}
        for name in ("attack", "eval_attack"):
            attack = getattr(self.model, name, None)
            if attack is not None and hasattr(attack, "seed_generator"):
                out[name] = attack.seed_generator
        trainer_generator = getattr(self.model, "_seed_generator", None)
        if trainer_generator is not None:
            out["trainer"] = trainer_generator
        return out

    @staticmethod
    def _hooks():
        from keras_rpat import backend as rpat_backend

        module = rpat_backend.get_backend()
        get, put = getattr(module, "get_random_state", None), getattr(module, "set_random_state", None)
        return (get, put) if get is not None and put is not None else (None, None)

    def on_train_begin(self, logs=None):
        saved = _read_json(self.path)
        meta = _read_json(self.metadata)
        if not saved or not meta or saved.get("epoch") != meta.get("epoch"):
            return
        _, put = self._hooks()
        for name, generator in self._generators().items():
            if name in saved.get("variables", {}):
                value = keras.ops.convert_to_tensor(saved["variables"][name], dtype=generator.state.dtype)
                generator.state.assign(value)
            if put is not None and name in saved.get("backend", {}):
                put(generator, saved["backend"][name])

    def on_epoch_end(self, epoch, logs=None):
        from keras_rpat.evaluation import _atomic_write_json

        get, _ = self._hooks()
        record = {"epoch": epoch + 1, "variables": {}, "backend": {}}
        for name, generator in self._generators().items():
            record["variables"][name] = keras.ops.convert_to_numpy(generator.state.value).tolist()
            if get is not None:
                record["backend"][name] = get(generator)
        _atomic_write_json(self.path, record)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(result, spec):
    return (
        isinstance(result, dict)
        and result.get("format") == RESULTS_FORMAT
        and result.get("complete") is True
        and result.get("fingerprint") == _jsonable(spec.run_fingerprint())
    )


def _default_echo(verbose):
    if not verbose:
        return lambda message: None
    from keras_rpat.callbacks import _print_msg

    return _print_msg


def _float_test(ds):
    from keras_rpat.datasets import _to_float01

    return _to_float01(ds.x_test), ds.y_test


def run_experiment(
    spec,
    out_dir,
    data_dir=None,
    verbose=1,
    overwrite=False,
    replace_stale=False,
    echo=None,
    callbacks=None,
    dataset_cache=None,
):
    """Trains, checkpoints and evaluates one run; writes its `results.json`.

    The run lives in `out_dir / spec.run_dir`: `run.json` (what is being
    run), `backup/` (Keras `BackupAndRestore` state while training),
    `history.json` (clean and robust accuracy per epoch), `train_log.json`
    (Keras logs per epoch), `best.keras` / `final.keras`,
    `eval_<checkpoint>.json` (and `perception_<checkpoint>.json`) and finally
    `results.json`. Every file is written atomically.

    Calling it again after an interruption continues from the last completed
    epoch (and an interrupted AutoAttack from its last batch); a finished run
    (complete `results.json`) is skipped.

    Args:
        spec: a `RunSpec` (from `Recipe.runs`).
        out_dir: the output folder.
        data_dir: where the datasets are (see `keras_rpat.datasets.load`).
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        overwrite: discard the run's earlier files and start over.
        replace_stale: discard the run's files when they belong to another
            configuration (instead of raising).
        echo: callable for status lines (default: Keras' print when
            `verbose`).
        callbacks: extra Keras callbacks for `fit`.
        dataset_cache: dict reused across runs to load each dataset once.

    Returns:
        The results dict (as written to `results.json`), with `"skipped":
        True` when the run was already complete.
    """
    from keras_rpat import callbacks as callbacks_lib
    from keras_rpat import datasets
    from keras_rpat import evaluation

    echo = echo or _default_echo(verbose)
    run_dir = Path(out_dir) / spec.run_dir
    results_path = run_dir / "results.json"
    run_json = run_dir / "run.json"
    fingerprint = _jsonable(spec.run_fingerprint())
    if overwrite and run_dir.is_dir():
        _clear_run_dir(run_dir)
    existing = _read_json(run_json)
    if existing is not None and existing.get("fingerprint") != fingerprint:
        if not replace_stale:
            raise RecipeError(
                f"{run_dir} holds a run of a different configuration "
                f"({_diff(existing.get('fingerprint') or {}, fingerprint)}). "
                "Use another output folder, or pass overwrite=True (--overwrite) to replace it."
            )
        warnings.warn(f"Replacing the stale run in {run_dir} (it belongs to another configuration).", stacklevel=2)
        _clear_run_dir(run_dir)
    previous = _read_json(results_path)
    if _is_complete(previous, spec):
        echo(f"skip (complete): {spec.describe()}")
        previous["skipped"] = True
        return previous

    start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluation._atomic_write_json(run_json, {"spec": _jsonable(spec.to_dict()), "fingerprint": fingerprint})
    keras.utils.set_random_seed(spec.seed)
    preset = build_preset(spec)
    cache = {} if dataset_cache is None else dataset_cache
    ds = _load_dataset(spec, data_dir, cache)
    model = _build_model(spec, preset, ds)
    train_seq, _ = datasets.make_datasets(
        ds,
        batch_size=spec.batch_size,
        pipeline=preset.pipeline,
        two_view=preset.two_view,
        cutmix=bool(spec.options.get("cutmix", False)),
        seed=spec.seed,
    )
    trainer = preset.build_trainer(model, seed=spec.seed)
    trainer.compile(optimizer=preset.optimizer(len(train_seq)))
    x_test, y_test = _float_test(ds)
    norm, epsilon, step_size = _threat(spec, preset)
    smoke = spec.smoke
    eval_settings = {
        "attacks": list(spec.eval_attacks),
        "checkpoints": list(spec.checkpoints),
        "norm": norm,
        "epsilon": epsilon,
        "step_size": step_size,
        "pgd_steps": SMOKE["eval_steps"] if smoke else 20,
        "n": SMOKE["eval_n"] if smoke else None,
        "batch_size": 256,
        "autoattack_version": "custom" if smoke else spec.autoattack_version,
        "autoattack_attacks": SMOKE["aa_attacks"] if smoke else None,
        "autoattack_options": SMOKE["aa_options"] if smoke else None,
        "select_steps": SMOKE["select_steps"] if smoke else spec.select_steps,
        "perception": None,
    }
    if spec.perception is not None:
        eval_settings["perception"] = dict(
            spec.perception,
            perturbation=spec.perturbation,
            num_steps=SMOKE["eval_steps"] if smoke else spec.perception["num_steps"],
        )

    # ---------------------------------------------------------------- train
    trained_path = run_dir / "trained.json"
    history_path = run_dir / "history.json"
    robust = callbacks_lib.RobustEvaluation(
        x_test,
        y_test,
        num_steps=eval_settings["select_steps"],
        checkpoint_dir=run_dir,
        history_path=history_path,
        batch_size=256,
        seed=spec.seed,
        verbose=1 if verbose else 0,
    )
    if _read_json(trained_path) is None:
        backup_dir = run_dir / "backup"
        meta = _read_json(backup_dir / "training_metadata.json") or {}
        initial_epoch = int(meta.get("epoch", 0))
        if initial_epoch:
            echo(f"resuming {spec.describe()} after epoch {initial_epoch}")
        train_seq.set_epoch(initial_epoch)
        fit_callbacks = [
            robust,
            _EpochLog(str(run_dir / "train_log.json")),
            _AttackRandomState(str(backup_dir)),
            keras.callbacks.BackupAndRestore(str(backup_dir)),
        ]
        fit_callbacks += list(callbacks or [])
        # `shuffle=False`: TrainSequence reshuffles itself from (seed, epoch), so the
        # batch order does not depend on global random state and a resumed run
        # sees the same batches as an uninterrupted one.
        trainer.fit(train_seq, epochs=spec.epochs, verbose=verbose, callbacks=fit_callbacks, shuffle=False)
        evaluation._atomic_write_json(
            trained_path, {"epochs": spec.epochs, "best_epoch": robust.best_epoch, "best_robust": robust.best}
        )
    trained = _read_json(trained_path)
    history = _read_json(history_path) or []
    train_log = {r["epoch"]: r for r in (_read_json(run_dir / "train_log.json") or [])}
    merged_history = [dict(train_log.get(r["epoch"], {}), **r) for r in history]

    # ---------------------------------------------------------------- evaluate
    metrics = {}
    perception = {}
    for ckpt in spec.checkpoints:
        eval_path = run_dir / f"eval_{ckpt}.json"
        result = _read_json(eval_path)
        classifier = None
        if result is None:
            classifier = _load_checkpoint(run_dir / f"{ckpt}.keras")
            result = evaluation.evaluate(
                classifier,
                x_test,
                y_test,
                attacks=spec.eval_attacks,
                norm=norm,
                epsilon=epsilon,
                step_size=step_size,
                num_steps=eval_settings["pgd_steps"],
                n=eval_settings["n"],
                batch_size=256,
                seed=spec.seed,
                aa_version=eval_settings["autoattack_version"],
                aa_attacks=eval_settings["autoattack_attacks"],
                aa_options=eval_settings["autoattack_options"],
                aa_state_path=str(run_dir / f"aa_state_{ckpt}.json"),
            ).to_dict()
            evaluation._atomic_write_json(eval_path, result)
        metrics[ckpt] = result
        p = eval_settings["perception"]
        if p is not None and p["checkpoint"] == ckpt:
            perception_path = run_dir / f"perception_{ckpt}.json"
            presult = _read_json(perception_path)
            if presult is None:
                classifier = classifier or _load_checkpoint(run_dir / f"{ckpt}.keras")
                x_p, y_p = x_test, y_test
                if smoke:  # the evenly strided images that `evaluate(n=...)` uses
                    idx = evaluation._strided_indices(len(x_test), SMOKE["eval_n"])
                    x_p, y_p = x_test[idx], y_test[idx]
                presult = evaluation.perception_analysis(
                    classifier,
                    x_p,
                    y_p,
                    perturbation=spec.perturbation,
                    epsilon=p["epsilon"],
                    step_size=p["step_size"],
                    num_steps=p["num_steps"],
                    batch_size=256,
                    seed=spec.seed,
                ).to_dict()
                evaluation._atomic_write_json(perception_path, presult)
            perception[ckpt] = presult

    summary = _summarize(metrics, perception, trained, history)
    elapsed = time.time() - start
    result = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "complete": True,
        "recipe": spec.recipe,
        "run": _jsonable(spec.to_dict()),
        "fingerprint": fingerprint,
        "config": _resolved_config(spec, preset, model, ds, train_seq, eval_settings),
        "provenance": evaluation.provenance(model, elapsed=elapsed),
        "wall_time_s": round(elapsed, 3),
        "train_time_s": round(sum((r.get("time") or 0) + (r.get("eval_time") or 0) for r in history), 3),
        "history": merged_history,
        "metrics": metrics,
        "perception": perception or None,
        "summary": summary,
    }
    result = _jsonable(result)
    evaluation._atomic_write_json(results_path, result)
    echo(_summary_line(spec, summary, elapsed))
    return result


_RUN_FILES = ("run.json", "results.json", "trained.json", "history.json", "train_log.json", "best.keras", "final.keras")
_RUN_PATTERNS = ("eval_*.json", "perception_*.json", "aa_state_*.json", ".*.tmp", ".*.keras")


def _clear_run_dir(run_dir):
    """Deletes the files a run writes (and nothing else) from its folder."""
    run_dir = Path(run_dir)
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for pattern in _RUN_PATTERNS:
        for path in run_dir.glob(pattern):
            if path.is_file():
                path.unlink()
    backup = run_dir / "backup"
    if backup.is_dir():
        shutil.rmtree(backup)


def _load_checkpoint(path):
    import keras_rpat.layers  # noqa: F401  (registers the custom layers)
    import keras_rpat.models  # noqa: F401

    if not Path(path).exists():
        raise RecipeError(f"Checkpoint {path} is missing; delete {Path(path).parent / 'trained.json'} to retrain the run.")
    return keras.saving.load_model(path, compile=False)


def _summarize(metrics, perception, trained, history):
    from keras_rpat.evaluation import mean_nrr

    s = {"best_epoch": None if trained is None else trained.get("best_epoch"), "epochs_trained": len(history)}
    for ckpt, r in metrics.items():
        s[f"clean_{ckpt}"] = r.get("clean")
        s[f"pgd20_{ckpt}"] = r.get("pgd20")
        s[f"aa_{ckpt}"] = r.get("autoattack")
    for ckpt, suffix in (("best", ""), ("final", "_final")):
        clean = s.get(f"clean_{ckpt}")
        robust = s.get(f"aa_{ckpt}")
        if robust is None:
            robust = s.get(f"pgd20_{ckpt}")
        if clean is not None and robust is not None:
            s[f"mean{suffix}"], s[f"nrr{suffix}"] = mean_nrr(clean, robust)
    for ckpt, p in perception.items():
        s["mse_success"] = p.get("mse_success")
        s["mse_failure"] = p.get("mse_failure")
        s["clean_acc"] = p.get("clean_accuracy")
        s["perturbed_acc"] = p.get("perturbed_accuracy")
        s["perception_checkpoint"] = ckpt
    return s


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _summary_line(spec, s, elapsed):
    parts = []
    for ckpt in spec.checkpoints:
        items = [f"clean {_fmt(s.get(f'clean_{ckpt}'))}"]
        if s.get(f"pgd20_{ckpt}") is not None:
            items.append(f"PGD-20 {_fmt(s.get(f'pgd20_{ckpt}'))}")
        if s.get(f"aa_{ckpt}") is not None:
            items.append(f"AA {_fmt(s.get(f'aa_{ckpt}'))}")
        label = ckpt + (f" (epoch {s['best_epoch']})" if ckpt == "best" and s.get("best_epoch") else "")
        parts.append(f"{label}: " + ", ".join(items))
    if s.get("mean") is not None:
        parts.append(f"Mean {s['mean']:.2f}, NRR {s['nrr']:.2f}")
    if s.get("mse_success") is not None or s.get("mse_failure") is not None:
        parts.append(f"MSE success {_fmt(s.get('mse_success'), 4)} / failure {_fmt(s.get('mse_failure'), 4)}")
    return f"done {spec.method} {spec.dataset} {spec.arch} {spec.norm} seed {spec.seed}: " + "; ".join(parts) + f" [{_duration(elapsed)}]"


def _duration(seconds):
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _diff(old, new):
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed) or "no difference"


# ---------------------------------------------------------------------------
# Running a recipe
# ---------------------------------------------------------------------------


def check_out_dir(out_dir, fingerprint, overwrite=False):
    """Refuses an output folder that holds results of another configuration.

    The folder's `config.json` records the configuration (recipe, a hash of
    its configuration, epochs, batch size, smoke mode). A different one is
    refused unless `overwrite`, which records the new configuration (results
    of the old one are then ignored by the report and replaced when re-run).

    Raises:
        RecipeError: the folder belongs to another configuration.
    """
    from keras_rpat.evaluation import _atomic_write_json

    out_dir = Path(out_dir)
    path = out_dir / "config.json"
    existing = _read_json(path)
    if path.exists() and existing is None:
        if not overwrite:
            raise RecipeError(f"{path} is not valid JSON. Pass --overwrite to replace it, or use another --out.")
    elif existing is not None and existing != fingerprint:
        if not overwrite:
            raise RecipeError(
                f"{out_dir} holds results of a different configuration ({_diff(existing, fingerprint)}). "
                "Use another --out, or pass --overwrite to replace them."
            )
        warnings.warn(f"{out_dir}: replacing the configuration ({_diff(existing, fingerprint)}).", stacklevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(path, fingerprint)
    return path


def run_recipe(recipe, runs, out_dir, data_dir=None, overwrite=False, verbose=1, echo=None):
    """Runs a recipe's plan and writes its report.

    Args:
        recipe: a `Recipe` (or a name).
        runs: the `RunSpec`s to run (from `recipe.runs(...)`; all of one
            configuration).
        out_dir: output folder (each run in its own subfolder).
        data_dir: dataset folder (see `keras_rpat.datasets.load`).
        overwrite: accept an output folder of another configuration, and
            re-run the selected runs from scratch.
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
        echo: callable for status lines.

    Returns:
        A dict with `results` (one per run) and `report` (paths written by
        `write_report`).
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    runs = list(runs)
    if not runs:
        raise RecipeError("The run plan is empty.")
    fingerprints = {json.dumps(r.fingerprint, sort_keys=True) for r in runs}
    if len(fingerprints) != 1 or runs[0].recipe != recipe.name:
        raise RecipeError("All runs must come from one `recipe.runs(...)` call of this recipe.")
    echo = echo or _default_echo(verbose)
    _preflight(runs, data_dir)
    check_out_dir(out_dir, runs[0].fingerprint, overwrite)
    cache = {}
    results = []
    for i, spec in enumerate(runs, 1):
        if i > 1:
            keras.backend.clear_session()  # free the previous run's models and graphs
        echo(f"[{i}/{len(runs)}] {spec.describe()} -> {Path(out_dir) / spec.run_dir}")
        results.append(
            run_experiment(
                spec,
                out_dir,
                data_dir=data_dir,
                verbose=verbose,
                overwrite=overwrite,
                replace_stale=True,
                echo=echo,
                dataset_cache=cache,
            )
        )
        # Datasets are kept while later runs need them.
        needed = {r.dataset for r in runs[i:]}
        for key in [k for k in cache if k[0] not in needed and k[0] != "synthetic"]:
            del cache[key]
    report = write_report(recipe, out_dir, fingerprint=runs[0].fingerprint)
    return {"results": results, "report": report}


def _preflight(runs, data_dir):
    """Fails before the first run when a local dataset (Tiny-ImageNet) is missing."""
    if any(r.smoke for r in runs) or not any(r.dataset == "tiny_imagenet" for r in runs):
        return
    from keras_rpat import datasets

    finder = getattr(datasets, "_find_tiny_root", None)
    if finder is not None:
        finder(None if data_dir is None else os.fspath(data_dir))


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def collect_results(recipe, out_dir, fingerprint=None):
    """Reads the complete `results.json` files of a recipe's output folder.

    Args:
        recipe: a `Recipe`.
        out_dir: the output folder.
        fingerprint: keep results of this configuration only (default: the
            folder's `config.json`).

    Returns:
        A dict `{(method_id, dataset, arch, norm): [summary per seed]}`
        (each summary has a `seed` key), for every recipe method the run
        serves.
    """
    out_dir = Path(out_dir)
    if fingerprint is None:
        fingerprint = _read_json(out_dir / "config.json")
    found = {}
    for path in sorted(out_dir.glob("*/*/seed*/results.json")):
        r = _read_json(path)
        if not isinstance(r, dict) or r.get("format") != RESULTS_FORMAT or not r.get("complete"):
            continue
        run = r.get("run", {})
        if run.get("recipe") != recipe.name:
            continue
        if fingerprint is not None and run.get("fingerprint") != _jsonable(fingerprint):
            continue
        summary = dict(r.get("summary", {}), seed=run.get("seed"), run_dir=run.get("run_dir"))
        for mid in run.get("methods", [run.get("method")]):
            key = (mid, run.get("dataset"), run.get("arch"), run.get("norm"))
            found.setdefault(key, []).append(summary)
    for values in found.values():
        values.sort(key=lambda s: s["seed"])
    return found


def _aggregate(values, metric):
    """(mean, std, n) of a metric over seeds; Mean/NRR from averaged inputs."""
    import numpy as np

    from keras_rpat.evaluation import mean_nrr

    if metric in ("mean", "nrr", "mean_final", "nrr_final"):
        ckpt = "final" if metric.endswith("_final") else "best"
        clean = [v.get(f"clean_{ckpt}") for v in values]
        robust = [v.get(f"aa_{ckpt}") if v.get(f"aa_{ckpt}") is not None else v.get(f"pgd20_{ckpt}") for v in values]
        pairs = [(c, r) for c, r in zip(clean, robust) if c is not None and r is not None]
        if not pairs:
            return None, None, 0
        c = float(np.mean([p[0] for p in pairs]))
        r = float(np.mean([p[1] for p in pairs]))
        index = 0 if metric.startswith("mean") else 1
        value = mean_nrr(c, r)[index]
        per_seed = [mean_nrr(*p)[index] for p in pairs]
        std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
        return value, std, len(pairs)
    xs = [v.get(metric) for v in values if v.get(metric) is not None]
    if not xs:
        return None, None, 0
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return float(np.mean(xs)), std, len(xs)


def _paper_value(recipe, entry, metric, field="paper_results"):
    for r in getattr(recipe, field):
        if r.get("method") != entry["method"]:
            continue
        if any(k in r and r[k] != entry[k] for k in ("dataset", "arch", "norm")):
            continue
        return r.get(metric)
    return None


def _dim_label(dim, value):
    if dim == "dataset":
        return DATASET_LABELS.get(value, value)
    if dim == "norm":
        return NORM_LABELS.get(value, value)
    return str(value)


def _digits(metric):
    """Number format: 4 significant digits for logit MSEs, 3 decimals for Mean / NRR (as the paper), else 2."""
    if metric in _MSE_METRICS:
        return ".4g"
    return ".3f" if metric in ("mean", "nrr", "mean_final", "nrr_final") else ".2f"


def _cell(measured, paper, tolerance, spec):
    value, std, n = measured
    text = "—" if value is None else format(value, spec)
    if value is not None and std is not None:
        text += f" ± {format(std, spec)}"
    if paper is None:
        return text
    if value is None:
        return f"— ({format(paper, spec)})"
    delta = value - paper
    flag = " ⚠" if abs(delta) > tolerance else ""
    return f"{text} ({format(paper, spec)}, {format(delta, '+' + spec)}){flag}"


def report_tables(recipe, found):
    """The comparison tables of a recipe as Markdown lines."""
    entries = recipe.entries()
    rows_dims = recipe.layout["rows"]
    group_dim = recipe.layout["groups"]
    order = {
        "dataset": recipe.datasets,
        "arch": recipe.archs,
        "norm": recipe.norms,
        "row": list(dict.fromkeys(m.row for m in recipe.methods)),
        "group": list(dict.fromkeys(m.group for m in recipe.methods)),
    }
    row_keys = sorted({recipe._row_key(e) for e in entries}, key=lambda k: tuple(order[d].index(v) for d, v in zip(rows_dims, k)))
    groups = [None] if group_dim is None else [g for g in order[group_dim] if any(e[group_dim] == g for e in entries)]
    columns = recipe.layout["columns"]

    def group_columns(g):
        return columns[g] if isinstance(columns, dict) else columns

    header = [d.capitalize() if d not in ("row", "group") else ("Method" if d == "row" else "Group") for d in rows_dims]
    for g in groups:
        prefix = "" if g is None else f"{_dim_label(group_dim, g)} "
        header += [prefix + METRIC_LABELS[c] for c in group_columns(g)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_cell = {(recipe._row_key(e), recipe._group_key(e)): e for e in entries}
    for rk in row_keys:
        cells = [_dim_label(d, v) for d, v in zip(rows_dims, rk)]
        for g in groups:
            e = by_cell.get((rk, g))
            for c in group_columns(g):
                if e is None:
                    cells.append("")
                    continue
                values = found.get((e["method"], e["dataset"], e["arch"], e["norm"]), [])
                cells.append(_cell(_aggregate(values, c), _paper_value(recipe, e, c), recipe.tolerance, _digits(c)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _detail_lines(recipe, found):
    metrics = ["clean_best", "pgd20_best", "aa_best", "clean_final", "pgd20_final", "aa_final", "mean", "nrr"]
    if recipe.config["perception"] is not None:
        metrics = ["clean_final", "pgd20_final", "mse_success", "mse_failure", "clean_acc", "perturbed_acc"]
    metrics = [m for m in metrics if any(_aggregate(v, m)[0] is not None for v in found.values())] or metrics[:1]
    header = ["Method", "Dataset", "Arch", "Norm", "Seeds"] + [METRIC_LABELS[m] for m in metrics]
    if recipe.config["perception"] is not None:
        header.append("Pattern")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in recipe.entries():
        values = found.get((e["method"], e["dataset"], e["arch"], e["norm"]), [])
        m = recipe.method(e["method"])
        seeds = ", ".join(str(v["seed"]) for v in values) or "—"
        cells = [f"{m.label} (`{m.id}`)", DATASET_LABELS[e["dataset"]], e["arch"], NORM_LABELS[e["norm"]], seeds]
        for metric in metrics:
            cells.append(_cell(_aggregate(values, metric), None, recipe.tolerance, _digits(metric)))
        if recipe.config["perception"] is not None:
            cells.append(_pattern(m, values))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pattern(method, values):
    s, _, _ = _aggregate(values, "mse_success")
    f, _, _ = _aggregate(values, "mse_failure")
    if s is None or f is None:
        return "—"
    observed = "failure > success" if f > s else "failure < success"
    if method.expect is None:
        return observed
    return f"{observed} ({'as expected' if observed == method.expect else 'expected ' + method.expect})"


def write_report(recipe, out_dir, fingerprint=None):
    """Writes `<out>/<recipe>.md` and `<out>/<recipe>.json` (and PNGs for figures).

    The Markdown puts the measured numbers (mean ± std over seeds) beside the
    paper's, with the difference, in the layout of the paper's table; cells
    whose difference exceeds the recipe's tolerance are marked ⚠; runs not
    (yet) done show "—".

    Args:
        recipe: a `Recipe` (or a name).
        out_dir: the output folder.
        fingerprint: report results of this configuration only (default:
            the folder's `config.json`).

    Returns:
        A dict of the paths written (`markdown`, `json`, `figures`).
    """
    from keras_rpat.evaluation import _atomic_write_json
    from keras_rpat.evaluation import _atomic_write_text

    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    out_dir = Path(out_dir)
    if fingerprint is None:
        fingerprint = _read_json(out_dir / "config.json")
    found = collect_results(recipe, out_dir, fingerprint)
    smoke = bool(fingerprint and fingerprint.get("smoke"))
    lines = [f"# {recipe.title}", ""]
    lines.append(f"*{recipe.paper}.* {recipe.caption}")
    lines.append("")
    if fingerprint:
        lines.append(
            f"Configuration: {fingerprint['epochs']} epoch{'s' if fingerprint['epochs'] != 1 else ''}, "
            f"batch size {fingerprint['batch_size']}"
            + (" — **SMOKE RUN on tiny synthetic data: the numbers mean nothing**" if smoke else "")
            + f" (recipe hash `{fingerprint['config_sha256'][:12]}`)."
        )
        lines.append("")
    n_runs = len({v.get("run_dir") for vs in found.values() for v in vs})
    lines.append(
        "Cells: measured mean ± std over seeds (paper, measured − paper); "
        f"⚠ marks a difference above the tolerance of {recipe.tolerance:g} pp; — = not run yet. "
        f"{n_runs} result(s) found."
    )
    lines.append("")
    lines.extend(report_tables(recipe, found))
    if recipe.literature:
        lines += ["", "## Literature rows (from the paper, not re-run)", ""]
        cols = [c for c in METRICS if any(c in r for r in recipe.literature)]
        dims = [d for d in ("norm", "dataset", "arch") if any(d in r for r in recipe.literature)]
        header = ["Method", "Venue"] + [d.capitalize() for d in dims] + [METRIC_LABELS[c] for c in cols]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in recipe.literature:
            cells = [r["label"], r.get("venue", "")] + [_dim_label(d, r.get(d, "")) for d in dims]
            cells += [_fmt(r.get(c), 3 if c in ("mean", "nrr") else 2) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## All measured metrics", ""]
    lines.extend(_detail_lines(recipe, found))
    if recipe.notes:
        lines += ["", "## Notes", ""]
        lines.extend(f"- {n}" for n in recipe.notes)
    figures = []
    if recipe.kind == "figure":
        from keras_rpat import plots

        try:
            figures = plots.plot_recipe(recipe, found, out_dir, smoke=smoke)
        except ImportError as e:  # no matplotlib: keep the results, say what is missing
            warnings.warn(f"The figure of {recipe.name} was not drawn: {e}", stacklevel=2)
            lines += ["", "## Figures", "", f"Not drawn: {e}"]
        if figures:
            lines += ["", "## Figures", ""]
            lines.extend(f"![{Path(p).stem}]({Path(p).name})" for p in figures)
    markdown_path = out_dir / f"{recipe.name}.md"
    _atomic_write_text(markdown_path, "\n".join(lines) + "\n")
    json_path = out_dir / f"{recipe.name}.json"
    payload = {
        "recipe": recipe.name,
        "fingerprint": fingerprint,
        "results": [
            {"method": k[0], "dataset": k[1], "arch": k[2], "norm": k[3], "seeds": v} for k, v in sorted(found.items())
        ],
    }
    _atomic_write_json(json_path, _jsonable(payload))
    return {"markdown": str(markdown_path), "json": str(json_path), "figures": [str(p) for p in figures]}
