"""Recipe files: finding, reading and validating them; the run plan.

A recipe is data: `recipes/<name>.toml` holds the paper's table or figure,
its caption, a flat configuration (methods, datasets, architectures, norms,
epochs, seeds, schedule, evaluation), the paper's numbers per row and a
tolerance. `load_recipe(name)` validates it into a `Recipe`, and
`Recipe.runs(...)` is the run plan: one `RunSpec` per method, setup, norm and
seed.
"""

import copy
import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
from pathlib import Path

from keras_rpat import _checks
from keras_rpat import _names
from keras_rpat import method_presets
from keras_rpat._names import AA_VERSIONS
from keras_rpat._names import EVALUATION_ATTACKS
from keras_rpat._names import PERTURBATIONS
from keras_rpat._names import PGD_EVAL_STEPS

__all__ = [
    "METRICS",
    "Method",
    "Recipe",
    "RecipeError",
    "RunSpec",
    "list_recipes",
    "load_recipe",
    "recipes_dir",
    "run_cell",
    "smoke_description",
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
MSE_METRICS = ("mse_success", "mse_failure")

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

# The run options of a recipe method (`method_presets.OPTION_TYPES`); the RobustPerception ones by the
# loss argument each sets. Which methods take which option, and its default, is the method's row.
RP_OPTIONS = {option: argument for option, (argument, _) in method_presets.RPAT_OPTIONS.items()}

_TOP_KEYS = (
    "name",
    "title",
    "paper",
    "caption",
    "kind",
    "notes",
    "config",
    "methods",
    "layout",
    "paper_results",
    "literature",
)
CONFIG_KEYS = (
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
    # Batches smaller than the evaluation, so a smoke run goes through several batches like a real one
    # (and a test can kill it between two).
    "eval_batch_size": 8,
    "aa_batch_size": 4,
    "aa_attacks": ["apgd-ce"],
    "aa_options": {"apgd": {"n_iter": 2}},
}


def smoke_description():
    """What a smoke run actually runs, for plans, consoles, reports and figure titles."""
    return (
        f"small_cnn {SMOKE['widths']} on {SMOKE['n_train']} synthetic {SMOKE['image_size']}x{SMOKE['image_size']} "
        f"images, {SMOKE['train_steps']}-step training attack, PGD-{SMOKE['eval_steps']} evaluation on "
        f"{SMOKE['eval_n']} images, AutoAttack replaced by {'+'.join(a.upper() for a in SMOKE['aa_attacks'])} "
        f"({SMOKE['aa_options']['apgd']['n_iter']} iterations)"
    )


def run_cell(dataset, arch, norm, smoke):
    """The middle part of a run's folder: what it trains on, named after what actually runs.

    `cifar10-resnet18_bottleneck-linf`; a smoke run trains `small_cnn` on synthetic data, so its folder
    says so first and then names the recipe cell it stands in for:
    `smoke-small_cnn-synthetic-linf-for-cifar10-resnet18_bottleneck`. Cells that collapse into the same
    smoke computation (two datasets of one table) keep folders of their own: the report, `keras-rpat report`
    and the folder's configuration check key every result by its cell.
    """
    if smoke:
        return f"smoke-small_cnn-synthetic-{norm}-for-{dataset}-{arch}"
    return f"{dataset}-{arch}-{norm}"


class RecipeError(ValueError):
    """A recipe file, a run plan or an output folder is not valid."""


# ---------------------------------------------------------------------------
# Finding and reading recipes
# ---------------------------------------------------------------------------


def recipes_dir():
    """Returns the folder of the recipe TOML files.

    `$KERAS_RPAT_RECIPES` if set; else the repository's top-level `recipes/`
    folder (a source checkout or an editable install); else the copy of that
    folder shipped in the wheel as the package data `keras_rpat.recipes.files`.
    """
    env = os.environ.get(RECIPES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    source = Path(__file__).resolve().parents[2] / "recipes"
    if source.is_dir():
        return source
    return Path(str(importlib.resources.files("keras_rpat.recipes") / "files"))


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


def _fraction(where, value, name, norm):
    """A budget or step in `norm`: > 0, and not in 0-255 units (`_checks.check_budget`)."""
    try:
        return _checks.check_budget(value, name, norm)
    except ValueError as e:
        _err(where, str(e))


def _key(text):
    return str(text).strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def _canonical_recipe_dataset(value):
    """A recipe dataset name for any spelling (`"CIFAR-10"`, `"tinyimagenet"`)."""
    return next((d for d in DATASETS if _key(d) == _key(value)), _key(value))


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
            `rp_weight`, `l2_step_size`, `teacher_training`).
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
    l2_step_size: float = method_presets.L2_STEP_SIZE
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
        if self.smoke:  # the model and data that actually run
            return (
                f"{what} [smoke: small_cnn on synthetic data, standing in for {self.arch} on {self.dataset}] "
                f"{self.norm} seed {self.seed}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}"
            )
        return (
            f"{what} {self.dataset} {self.arch} {self.norm} "
            f"seed {self.seed}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}"
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
            CONFIG_KEYS,
            required=(
                "datasets",
                "archs",
                "norms",
                "epochs",
                "batch_size",
                "pipeline",
                "seeds",
                "eval_attacks",
                "checkpoints",
                "tolerance",
            ),
        )
        out = {}
        out["datasets"] = _list(where, config["datasets"], "datasets", lambda v: _str(where, v, "datasets", DATASETS))

        def arch(v):
            try:
                return _names.canonical_model_name(_str(where, v, "archs"))
            except ValueError as e:
                _err(where, str(e))

        out["archs"] = _list(where, config["archs"], "archs", arch)

        def norm(v):
            try:
                return _checks.canonical_norm(_str(where, v, "norms"))
            except ValueError as e:
                _err(where, str(e))

        out["norms"] = _list(where, config["norms"], "norms", norm)
        out["setups"] = _validate_setups(where, config, out, arch)
        out["epochs"] = _int(where, config["epochs"], "epochs")
        out["batch_size"] = _int(where, config["batch_size"], "batch_size")
        out["pipeline"] = _str(where, config["pipeline"], "pipeline", ("bench", "sotas"))
        out["seeds"] = _list(where, config["seeds"], "seeds", lambda v: _int(where, v, "seeds", minimum=0))
        if "lr_schedule" in config:
            out["lr_schedule"] = _str(where, config["lr_schedule"], "lr_schedule", ("multistep", "piecewise"))
        if "lr_milestones" in config:
            out["lr_milestones"] = _list(
                where, config["lr_milestones"], "lr_milestones", lambda v: _int(where, v, "lr_milestones", 0)
            )
        if "lr_factor" in config:
            out["lr_factor"] = _number(where, config["lr_factor"], "lr_factor", 1.0, strict=False)
        out["eval_attacks"] = _list(
            where, config["eval_attacks"], "eval_attacks", lambda v: _str(where, v, "eval_attacks", EVALUATION_ATTACKS)
        )
        out["autoattack_version"] = _str(
            where, config.get("autoattack_version", "standard"), "autoattack_version", AA_VERSIONS
        )
        out["checkpoints"] = _list(
            where, config["checkpoints"], "checkpoints", lambda v: _str(where, v, "checkpoints", CHECKPOINTS)
        )
        if "reported_model" in config:
            out["reported_model"] = _str(where, config["reported_model"], "reported_model", ("online", "wa"))
        out["select_steps"] = _int(where, config.get("select_steps", 10), "select_steps")
        out["l2_step_size"] = _fraction(
            where, config.get("l2_step_size", method_presets.L2_STEP_SIZE), "l2_step_size", "l2"
        )
        out["tolerance"] = _number(where, config["tolerance"], "tolerance", 0.0)
        out["perception"] = _validate_perception(f"{where} perception", config.get("perception"), out["checkpoints"])
        return out

    @staticmethod
    def _validate_methods(where, methods, config):
        return validate_methods(where, methods, config)

    @staticmethod
    def _validate_layout(where, layout, methods):
        _check_keys(where, layout, ("rows", "groups", "columns"))
        default_columns = (
            ["mse_success", "mse_failure", "clean_acc", "perturbed_acc"]
            if any(m.perturbation for m in methods)
            else ["clean_best", "aa_best", "mean", "nrr"]
        )
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
                _err(where, 'per-group `columns` (a table) need `groups = "group"`.')
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
                    row["arch"] = _names.canonical_model_name(entry["arch"])
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
            key = (self.row_key(entry), self.group_key(entry))
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
                    out.append(
                        {
                            "method": m.id,
                            "dataset": s["dataset"],
                            "arch": s["arch"],
                            "norm": n,
                            "row": m.row,
                            "group": m.group,
                        }
                    )
        return out

    def row_key(self, entry):
        """The Markdown row an entry belongs to (its values of `layout.rows`)."""
        return tuple(entry[d] for d in self.layout["rows"])

    def group_key(self, entry):
        """The column group of an entry (`None` without `layout.groups`)."""
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
            values = _checks.split_list(values)
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
                raise RecipeError(
                    f"Recipe {self.name!r} has no {name} {v!r}{alias}. Valid: {', '.join(map(str, valid))}."
                )
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
            preset = method_presets.canonical_preset_name(value)
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

    def runs(
        self, dataset=None, arch=None, norm=None, method=None, seeds=None, epochs=None, smoke=False, batch_size=None
    ):
        """The run plan: one `RunSpec` per method, setup, norm and seed.

        Narrowing arguments take one value, a list, or a comma-separated
        string; each is checked against what the recipe contains. They are
        the dimensions of the plan (and the `keras-rpat recipe` options), one
        argument each.

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
        datasets = self._narrow("dataset", dataset, self.datasets, _canonical_recipe_dataset)
        archs = self._narrow("arch", arch, self.archs, _names.canonical_model_name)
        norms = self._narrow("norm", norm, self.norms, _checks.canonical_norm)
        method_ids = self._narrow("method", method, [m.id for m in self.methods], self._match_method)
        if seeds is None:
            seeds = self.seeds[:1] if smoke else self.seeds
        elif isinstance(seeds, str):
            seeds = parse_seeds(seeds)
        seeds = list(seeds)
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise RecipeError(f"Seeds must be non-negative integers. Received: {seeds!r}")
        if not seeds or len(set(seeds)) != len(seeds):
            raise RecipeError(f"Seeds must be a non-empty list without duplicates. Received: {seeds!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise RecipeError(f"`epochs` must be a positive integer. Received: epochs={epochs!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
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
                        options = canonical_options(m, n)
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
                            run_dir=f"{m.id}/{run_cell(setup['dataset'], setup['arch'], n, smoke)}/seed{seed}",
                        )
                        planned[key] = spec
                        out.append(spec)
        return out

    # ------------------------------------------------------------ display
    def describe(self):
        """The recipe as text: configuration, methods and the paper's numbers."""
        lines = [f"{self.name}: {self.title}", f"Paper: {self.paper}. {self.caption}", ""]
        lines.append("Configuration:")
        for key in CONFIG_KEYS:
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


def _validate_setups(where, config, out, arch):
    """The (dataset, arch, stem_stride) setups: `config.setups`, or every dataset x arch."""
    if "setups" in config:

        def setup(v):
            _check_keys(f"{where} setups", v, ("dataset", "arch", "stem_stride"), required=("dataset", "arch"))
            s = {"dataset": _str(where, v["dataset"], "setups.dataset", out["datasets"]), "arch": arch(v["arch"])}
            if s["arch"] not in out["archs"]:
                _err(where, f"`setups` uses arch {s['arch']!r}, which is not in `archs` {out['archs']}")
            if "stem_stride" in v:
                s["stem_stride"] = _int(where, v["stem_stride"], "setups.stem_stride")
            return s

        setups = _list(where, config["setups"], "setups", setup)
    else:
        setups = [{"dataset": d, "arch": a} for d in out["datasets"] for a in out["archs"]]
    for s in setups:
        s.setdefault("stem_stride", 2 if s["dataset"] == "tiny_imagenet" else 1)
    return setups


def _validate_perception(pw, perception, checkpoints):
    """`[config.perception]` of Figures 2 and 5 (the PGD-20 or noise perturbation), or None."""
    if perception is None:
        return None
    _check_keys(pw, perception, ("epsilon", "step_size", "num_steps", "checkpoint"))
    out = {
        "epsilon": _fraction(pw, perception.get("epsilon", "8/255"), "epsilon", "linf"),
        "step_size": _fraction(pw, perception.get("step_size", "2/255"), "step_size", "linf"),
        "num_steps": _int(pw, perception.get("num_steps", PGD_EVAL_STEPS), "num_steps"),
        "checkpoint": _str(pw, perception.get("checkpoint", "final"), "checkpoint", CHECKPOINTS),
    }
    if out["checkpoint"] not in checkpoints:
        _err(pw, f"`checkpoint` {out['checkpoint']!r} is not in `checkpoints` {checkpoints}")
    return out


# ---------------------------------------------------------------------------
# Validating methods (also used for the single run of `keras-rpat train`)
# ---------------------------------------------------------------------------


def validate_methods(where, methods, config):
    """Validates `[[methods]]` tables against a recipe's (validated) config; returns `Method`s.

    `config` needs `norms` and `perception` (and may have `pipeline`,
    `epochs`, `lr_schedule`, `lr_milestones`, `lr_factor`, `reported_model`,
    which the presets must agree with).
    """
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
            _err(
                mw, f"`id` must be usable as a folder name (no '/', '\\', spaces or leading '.'). Received: id={mid!r}"
            )
        seen.add(mid)
        out.append(_validate_method(mw, mid, m, config))
    return out


def _validate_method(mw, mid, m, config):
    try:
        preset_name = method_presets.canonical_preset_name(_str(mw, m["preset"], "preset"))
    except ValueError as e:
        _err(mw, str(e))
    label = _str(mw, m["label"], "label")
    options = _validate_options(mw, m, preset_name, config)
    _check_preset_agrees(mw, preset_name, config)
    perturbation = m.get("perturbation")
    if perturbation is not None:
        _str(mw, perturbation, "perturbation", PERTURBATIONS)
        if config["perception"] is None:
            _err(mw, "`perturbation` needs a [config.perception] table.")
    elif config["perception"] is not None:
        _err(mw, "the recipe has [config.perception]: every method needs a `perturbation` ('random' or 'pgd20').")
    expect = m.get("expect")
    if expect is not None:
        _str(mw, expect, "expect", _EXPECTATIONS)
    return Method(
        id=mid,
        preset=preset_name,
        label=label,
        row=_str(mw, m.get("row", label), "row"),
        group=m.get("group", "") if isinstance(m.get("group", ""), str) else _err(mw, "`group` must be a string."),
        options=options,
        perturbation=perturbation,
        expect=expect,
    )


def _validate_options(mw, m, preset_name, config):
    options = dict(m.get("options", {}))
    if not isinstance(m.get("options", {}), dict):
        _err(mw, f"`options` must be a table. Received: {m['options']!r}")
    types = method_presets.OPTION_TYPES
    unknown = sorted(set(options) - set(types))
    if unknown:
        _err(mw, f"unknown option(s) {unknown}. Valid options: {sorted(types)}")
    for key, value in options.items():
        kind = types[key]
        if kind is bool and not isinstance(value, bool):
            _err(mw, f"option `{key}` must be true or false. Received: {value!r}")
        if kind is float:
            options[key] = _number(mw, value, key)
        if isinstance(kind, tuple):
            _str(mw, value, key)
        if kind == "fraction":
            options[key] = _fraction(mw, value, key, "l2")  # the only one: l2_step_size
    _check_options_apply(mw, options, preset_name)
    for key, value in options.items():
        if isinstance(types[key], tuple) and value not in types[key]:
            _err(mw, f"option `{key}` must be one of {list(types[key])}. Received: {value!r}")
    if "alpha" in options and not 0.0 < options["alpha"] < 1.0:
        _err(mw, f"option `alpha` (weight on the perturbation) must be in (0, 1). Received: {options['alpha']}")
    if "stronger_attack" in options and options["stronger_attack"] and "linf" not in config["norms"]:
        _err(mw, "option `stronger_attack` is defined for the L-inf threat model only (Table 6).")
    if "lr_factor" in options and options["lr_factor"] < 1.0:
        _err(mw, f"option `lr_factor` must be >= 1. Received: {options['lr_factor']}")
    if "beta" in options and options["beta"] < 0:
        _err(mw, f"option `beta` (weight of the BoAT / RPAT++ term) must be >= 0. Received: {options['beta']}")
    return options


def _check_options_apply(mw, options, preset_name):
    """Options of the RobustPerception term need a '+rpat' preset; the others a method whose row lists them."""
    accepted = method_presets.row(preset_name)["options"]
    for key in options:
        if key in RP_OPTIONS:
            if not preset_name.endswith("+rpat"):
                _err(
                    mw,
                    f"option `{key}` configures the RobustPerception term, but preset {preset_name!r} has none (use a '+rpat' preset).",
                )
        elif key != "l2_step_size" and key not in accepted:
            methods = method_presets.methods_with_option(key)
            if key == "teacher_training":
                what = f"sets the weight-averaged teacher's mode: it applies to the presets {methods} only"
            else:
                labels = " / ".join(method_presets.method_presets[m]["metadata"]["label"] for m in methods)
                what = f"applies to the {labels} presets only ({', '.join(methods)})"
            _err(mw, f"option `{key}` {what}. Received preset {preset_name!r}.")


def _check_preset_agrees(mw, preset_name, config):
    """The preset decides the pipeline, schedule and model type: the recipe's descriptive fields must agree."""
    preset = method_presets.preset_settings(preset_name)
    for field, recipe_key in (("pipeline", "pipeline"), ("epochs", "epochs"), ("schedule", "lr_schedule")):
        if recipe_key in config and preset[field] != config[recipe_key]:
            _err(
                mw,
                f"preset {preset_name!r} uses {field}={preset[field]!r} but the recipe's "
                f"`{recipe_key}` is {config[recipe_key]!r}. Keep the preset's value (use --epochs "
                "to shorten a run).",
            )
    if "lr_milestones" in config and list(preset["milestones"]) != config["lr_milestones"]:
        _err(
            mw,
            f"preset {preset_name!r} decays the learning rate at epochs {list(preset['milestones'])}, the recipe says {config['lr_milestones']}.",
        )
    if "lr_factor" in config and preset["schedule"] == "piecewise" and preset["lr_factor"] != config["lr_factor"]:
        _err(mw, f"preset {preset_name!r} uses lr_factor={preset['lr_factor']}, the recipe says {config['lr_factor']}.")
    if "reported_model" in config:
        # The weight-averaged presets evaluate the average (`WeightAveraging(evaluate_average=True)`).
        wa = method_presets.row(preset_name)["weight_averaging"] is not None
        if (config["reported_model"] == "wa") != wa:
            _err(
                mw,
                f"the recipe reports the {config['reported_model']!r} model, but preset {preset_name!r} {'has' if wa else 'has no'} weight averaging.",
            )


def _format_result_line(r, recipe):
    head = r.get("method") or r.get("label")
    venue = f" ({r['venue']})" if r.get("venue") else ""
    where = "".join(f" {r[k]}" for k in ("dataset", "arch", "norm") if k in r)
    values = ", ".join(f"{METRIC_LABELS[k]} {r[k]:g}" for k in METRICS if k in r)
    return f"{head}{venue}{where}: {values}"


def parse_seeds(text):
    """`"0,1,2"` -> `[0, 1, 2]` (a `RecipeError` for anything else)."""
    try:
        return [int(s) for s in _checks.split_list(text)]
    except ValueError:
        raise RecipeError(f"Seeds must be comma-separated integers such as 0,1,2. Received: {text!r}") from None


def canonical_options(method, norm):
    """Options without the values the preset uses anyway."""
    defaults = {option: default for option, (_, default) in method_presets.RPAT_OPTIONS.items()}
    defaults.update(method_presets.row(method.preset)["options"])
    out = {}
    for key, value in method.options.items():
        if key == "l2_step_size" and norm != "l2":
            continue
        if key in defaults and defaults[key] == value:
            continue
        out[key] = value
    return dict(sorted(out.items()))
