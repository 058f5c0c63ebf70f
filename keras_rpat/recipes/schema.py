"""Recipe files: their fields and types, finding and reading them, validating them.

A recipe is data: `recipes/<name>.toml` holds the paper's table or figure,
its caption, a flat configuration (methods, datasets, architectures, norms,
epochs, seeds, schedule, evaluation), the paper's numbers per row and a
tolerance. `validate_recipe` checks a parsed file (a method and its options
against its row of `keras_rpat.method_presets`); `plan.load_recipe(name)`
makes it a `plan.Recipe`, whose `runs(...)` is the run plan.
"""

import dataclasses
import importlib.resources
import math
import os
from pathlib import Path

from keras_rpat import _checks
from keras_rpat import _names
from keras_rpat import method_presets
from keras_rpat._names import AA_VERSIONS
from keras_rpat._names import PERTURBATIONS
from keras_rpat._names import PGD_EVAL_STEPS

__all__ = [
    "METRICS",
    "Method",
    "RecipeError",
    "list_recipes",
    "read_recipe",
    "recipes_dir",
    "validate_methods",
    "validate_recipe",
]

RECIPES_ENV = "KERAS_RPAT_RECIPES"
RESULTS_FORMAT = "keras_rpat.recipe_result"
RESULTS_VERSION = 1

CHECKPOINTS = ("best", "final")
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


def is_metric(name):
    """A fixed metric of `METRICS`, or a PGD evaluation's of a checkpoint (`"cw20_best"`, `"pgd20x5_final"`)."""
    return name in METRICS or variant_metric(name) is not None


def variant_metric(name):
    """`(evaluation, checkpoint)` of a PGD-variant metric (`"cw20_best"` -> `("cw20", "best")`), else None."""
    head, _, checkpoint = str(name).rpartition("_")
    if checkpoint not in CHECKPOINTS or head == "pgd20" or _names.pgd_evaluation(head) is None:
        return None
    try:
        canonical = _names.parse_attacks(head)[0]
    except ValueError:
        return None
    return (head, checkpoint) if canonical == head else None


def metric_label(name):
    """The column label of a metric (`"cw20_best"` -> `"CW-20 best"`)."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    evaluation, checkpoint = variant_metric(name)
    return f"{_names.pgd_label(*_names.pgd_evaluation(evaluation))} {checkpoint}"


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
    "generated_data",
    "generated_fraction",
)
_METHOD_KEYS = ("id", "preset", "label", "row", "group", "options", "perturbation", "expect")
_EXPECTATIONS = ("failure > success", "failure < success")


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
    ['beyond', 'figure2', 'figure4', 'figure5', 'table1', 'table2', 'table3', 'table4', 'table5', 'table6']
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


def read_recipe(name):
    """`(the parsed TOML document, its path)` of a recipe name or `.toml` path (`plan.load_recipe` validates it)."""
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
    return _toml_load(path), path


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


def _evaluation(where, value):
    """A canonical evaluation name of `keras-rpat eval --attacks` (`"cw20"`, `"pgd20x5"`, `"aa"` -> `"autoattack"`)."""
    try:
        [name] = _names.parse_attacks([_str(where, value, "eval_attacks")])
    except ValueError as e:
        _err(where, f"`eval_attacks`: {e}")
    return name


def _fraction(where, value, name, norm):
    """A budget or step in `norm`: > 0, and not in 0-255 units (`_checks.check_budget`)."""
    try:
        return _checks.check_budget(value, name, norm)
    except ValueError as e:
        _err(where, str(e))


def name_key(text):
    return str(text).strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def canonical_recipe_dataset(value):
    """A recipe dataset name for any spelling (`"CIFAR-10"`, `"tinyimagenet"`)."""
    return next((d for d in DATASETS if name_key(d) == name_key(value)), name_key(value))


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


def validate_recipe(data, path=None):
    """Validates a parsed TOML document and returns the fields of a `plan.Recipe`.

    `Recipe.from_dict` then checks that the layout gives each entry a cell of its own.
    """
    where = str(path) if path is not None else "recipe"
    _check_keys(where, data, _TOP_KEYS, required=("name", "title", "paper", "caption", "kind", "config", "methods"))
    name = _str(where, data["name"], "name")
    if path is not None and Path(path).stem != name:
        _err(where, f"`name` must equal the file name {Path(path).stem!r}. Received: name={name!r}")
    kind = _str(where, data["kind"], "kind", KINDS)
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        _err(where, f"`notes` must be a list of strings. Received: notes={notes!r}")
    config = _validate_config(f"{where} [config]", data["config"])
    methods = validate_methods(where, data["methods"], config)
    return {
        "name": name,
        "title": _str(where, data["title"], "title"),
        "paper": _str(where, data["paper"], "paper"),
        "caption": _str(where, data["caption"], "caption"),
        "kind": kind,
        "notes": list(notes),
        "config": config,
        "methods": methods,
        "layout": _validate_layout(f"{where} [layout]", data.get("layout", {}), methods, config["eval_attacks"]),
        "paper_results": _validate_results(where, data.get("paper_results", []), "paper_results", methods, config),
        "literature": _validate_results(where, data.get("literature", []), "literature", methods, config),
        "path": None if path is None else Path(path),
    }


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
    out["eval_attacks"] = _list(where, config["eval_attacks"], "eval_attacks", lambda v: _evaluation(where, v))
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
    out.update(validate_generated(where, config, path_optional=True))
    return out


# Wang et al. 2023's `--unsup-fraction` (DM-Improves-AT, core/utils/parser.py).
GENERATED_FRACTION = 0.7


def validate_generated(where, config, path_optional=False):
    """`generated_data` (an `.npz` of generated images) and `generated_fraction` (their share of a batch): both or
    neither; with `path_optional` (a recipe file), `generated_fraction` alone says the recipe needs generated data
    and the command line names the file (`keras-rpat recipe --generated-data`)."""
    path, fraction = config.get("generated_data"), config.get("generated_fraction")
    if path is None and fraction is None:
        return {}
    if path is None and path_optional:
        return {"generated_fraction": check_generated_fraction(where, fraction)}
    if path is None or fraction is None:
        given, missing = (
            ("generated_data", "generated_fraction") if fraction is None else ("generated_fraction", "generated_data")
        )
        _err(where, f'`{given}` needs `{missing}` (e.g. generated_data = "1m.npz", generated_fraction = 0.7).')
    return {
        "generated_data": _str(where, path, "generated_data"),
        "generated_fraction": check_generated_fraction(where, fraction),
    }


def check_generated_fraction(where, fraction):
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        _err(where, f"`generated_fraction` must be a number in (0, 1). Received: generated_fraction={fraction!r}")
    return float(fraction)


def missing_generated_message(recipe):
    """The error of a plan that mixes generated images into its batches but names no file of them."""
    return (
        f"Recipe {recipe!r} mixes generated images into every batch: pass their .npz with --generated-data PATH "
        "(generated_data=...; docs/guides/leaderboard.md#beyond says where to get the public EDM sets)."
    )


def generated_setting(config):
    """A run's generated data, `{"path": ..., "fraction": ...}`, from a validated config (None without; the path
    None when the recipe needs a file the command line has not named)."""
    if "generated_fraction" not in config:
        return None
    return {"path": config.get("generated_data"), "fraction": config["generated_fraction"]}


def _validate_layout(where, layout, methods, eval_attacks):
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

    def metric(v):
        if not is_metric(_str(where, v, "columns")):
            _err(
                where,
                f"`columns` must name metrics of {list(METRICS)}, or `<evaluation>_best` / `<evaluation>_final` "
                f"of a PGD evaluation of `eval_attacks` (e.g. cw20_best). Received: {v!r}",
            )
        variant = variant_metric(v)
        if variant is not None and variant[0] not in eval_attacks:
            _err(where, f"column {v!r} needs {variant[0]!r} in [config] `eval_attacks` {eval_attacks}.")
        return v

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


def _validate_results(where, entries, field, methods, config):
    if not isinstance(entries, list):
        _err(where, f"`{field}` must be a list of [[{field}]] tables.")
    out = []
    seen = set()
    ids = [m.id for m in methods]
    for i, entry in enumerate(entries):
        ew = f"{where} {field}[{i}]"
        keys = ("method",) if field == "paper_results" else ("label", "venue", "setting", "source")
        variants = tuple(k for k in entry if isinstance(entry, dict) and variant_metric(k) is not None)
        _check_keys(ew, entry, keys + ("dataset", "arch", "norm") + METRICS + variants, required=keys[:1])
        row = {}
        if field == "paper_results":
            row["method"] = _str(ew, entry["method"], "method", ids)
        else:
            row["label"] = _str(ew, entry["label"], "label")
            for key in ("venue", "setting", "source"):  # setting: what the row assumes; source: where it is from
                if key in entry:
                    row[key] = _str(ew, entry[key], key)
        if "dataset" in entry:
            row["dataset"] = _str(ew, entry["dataset"], "dataset", config["datasets"])
        if "arch" in entry:
            try:
                row["arch"] = _names.canonical_model_name(entry["arch"])
            except ValueError as e:
                _err(ew, str(e))
            if row["arch"] not in config["archs"]:
                _err(ew, f"`arch` must be one of {config['archs']}. Received: {entry['arch']!r}")
        if "norm" in entry:
            row["norm"] = _str(ew, entry["norm"], "norm", config["norms"])
        metrics = {k: _number(ew, entry[k], k, 0.0) for k in METRICS + variants if k in entry}
        if not metrics:
            _err(ew, f"no metric given; expected some of {list(METRICS)}")
        row.update(metrics)
        ident = tuple(row.get(k) for k in ("method", "label", "dataset", "arch", "norm"))
        if ident in seen:
            _err(ew, f"duplicate entry for {dict(zip(('method', 'label', 'dataset', 'arch', 'norm'), ident))}")
        seen.add(ident)
        out.append(row)
    return out


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
    linf = method_presets.BUDGETS["linf"]  # the default perturbation: the L-inf threat model's
    out = {
        "epsilon": _fraction(pw, perception.get("epsilon", linf["epsilon"]), "epsilon", "linf"),
        "step_size": _fraction(pw, perception.get("step_size", linf["step_size"]), "step_size", "linf"),
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
    _check_preset_agrees(mw, preset_name, config, options)
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
        if kind is int:
            options[key] = _int(mw, value, key, minimum=0)
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
    if "awp_gamma" in options and not options["awp_gamma"] > 0:
        _err(
            mw,
            f"option `awp_gamma` (AWP's size relative to each weight's norm) must be > 0. Received: {options['awp_gamma']}",
        )
    if "awp_warmup" in options and "awp_gamma" not in options:
        _err(mw, "option `awp_warmup` (AWP's first epoch) needs `awp_gamma` (AWP's size, e.g. 0.005).")
    if "beta" in options and options["beta"] < 0:
        _err(
            mw,
            f"option `beta` (weight of the TRADES / MART / BoAT / RPAT++ term) must be >= 0. Received: {options['beta']}",
        )
    if "learning_rate" in options and not options["learning_rate"] > 0:
        _err(
            mw, f"option `learning_rate` (SGD's, the schedule's peak) must be > 0. Received: {options['learning_rate']}"
        )
    if "label_smoothing" in options and not 0.0 <= options["label_smoothing"] < 1.0:
        _err(mw, f"option `label_smoothing` must be in [0, 1) (0.1 is usual). Received: {options['label_smoothing']}")
    if "ema" in options and not 0.0 < options["ema"] < 1.0:
        _err(mw, f"option `ema` (the EMA decay tau) must be in (0, 1) (0.995 is usual). Received: {options['ema']}")
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
        elif (
            key not in method_presets.EVERY_METHOD_OPTIONS
            and key not in method_presets.INGREDIENT_OPTIONS
            and key not in accepted
        ):
            methods = method_presets.methods_with_option(key)
            if key == "teacher_training":
                what = f"sets the weight-averaged teacher's mode: it applies to the presets {methods} only"
            else:
                labels = " / ".join(method_presets.method_presets[m]["metadata"]["label"] for m in methods)
                what = f"applies to the {labels} presets only ({', '.join(methods)})"
            _err(mw, f"option `{key}` {what}. Received preset {preset_name!r}.")


def _check_preset_agrees(mw, preset_name, config, options=None):
    """The preset decides the pipeline, schedule and model type: the recipe's descriptive fields must agree.

    A method whose `lr_schedule` option replaces the preset's schedule (`"cosine"`) owns its schedule: the
    recipe's `epochs` is that schedule's length, whatever the preset's.
    """
    preset = method_presets.preset_settings(preset_name)
    replaced = (options or {}).get("lr_schedule", preset["schedule"]) != preset["schedule"]
    for field, recipe_key in (("pipeline", "pipeline"), ("epochs", "epochs"), ("schedule", "lr_schedule")):
        if replaced and field != "pipeline":
            continue
        if recipe_key in config and preset[field] != config[recipe_key]:
            _err(
                mw,
                f"preset {preset_name!r} uses {field}={preset[field]!r} but the recipe's "
                f"`{recipe_key}` is {config[recipe_key]!r}. Keep the preset's value (use --epochs "
                "to shorten a run).",
            )
    if replaced:
        return
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


def parse_seeds(text):
    """`"0,1,2"` -> `[0, 1, 2]` (a `RecipeError` for anything else)."""
    try:
        return [int(s) for s in _checks.split_list(text)]
    except ValueError:
        raise RecipeError(f"Seeds must be comma-separated integers such as 0,1,2. Received: {text!r}") from None
