"""The run plan of a recipe: `Recipe` (a validated recipe file) and what it runs.

`Recipe.from_dict` takes a TOML document that `schema` validated; `Recipe.runs(...)`
is the run plan: one `RunSpec` per method, setup, norm and seed, optionally
narrowed. `SMOKE` is what a smoke run runs instead, and `run_cell` names a
run's folder.
"""

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from keras_rpat import _checks
from keras_rpat import _names
from keras_rpat import method_presets
from keras_rpat.recipes import schema
from keras_rpat.recipes.schema import CONFIG_KEYS
from keras_rpat.recipes.schema import metric_label
from keras_rpat.recipes.schema import RecipeError
from keras_rpat.recipes.schema import generated_setting
from keras_rpat.recipes.schema import parse_seeds

__all__ = [
    "SMOKE",
    "Recipe",
    "RunSpec",
    "awp_first_epoch",
    "canonical_options",
    "load_recipe",
    "run_cell",
    "smoke_description",
]

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


def awp_first_epoch(spec):
    """The first (0-based) epoch with AWP of a run (None without AWP): its `awp_warmup` option, not scaled by
    the run's length; a smoke run checks every phase, so its AWP starts in its last epoch at the latest."""
    if "awp_gamma" not in spec.options:
        return None
    warmup = spec.options.get("awp_warmup", 0)
    return min(warmup, spec.epochs - 1) if spec.smoke else warmup


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
    document, path = schema.read_recipe(name)
    return Recipe.from_dict(document, path=path)


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
        generated: generated data mixed into every batch, `{"path": ...,
            "fraction": ...}` (`keras_rpat.datasets.TrainSequence`), or None.
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
    generated: dict = None
    fingerprint: dict = dataclasses.field(default_factory=dict)
    run_dir: str = ""

    def to_dict(self):
        """The run as a JSON-serialisable dict."""
        out = dataclasses.asdict(self)
        out["methods"] = list(self.methods)
        out["eval_attacks"] = list(self.eval_attacks)
        out["checkpoints"] = list(self.checkpoints)
        if out["generated"] is None:  # runs without generated data keep the fingerprint they had before it existed
            del out["generated"]
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
        generated = "" if self.generated is None else f", {self.generated['fraction']:g} of each batch generated"
        return (
            f"{what} {self.dataset} {self.arch} {self.norm} "
            f"seed {self.seed}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}{generated}"
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

    # ------------------------------------------------------------ checks
    def _check_layout_unique(self, where):
        cells = {}
        for entry in self.entries():
            key = (self.row_key(entry), self.group_key(entry))
            if key in cells:
                raise RecipeError(
                    f"{where} [layout]: rows {self.layout['rows']} and groups {self.layout['groups']!r} put "
                    f"{cells[key]} and {entry} in the same cell; add a dimension to `rows`."
                )
            cells[key] = entry

    @classmethod
    def from_dict(cls, data, path=None):
        """Validates a parsed TOML document (`schema.validate_recipe`) and returns a `Recipe`."""
        recipe = cls(**schema.validate_recipe(data, path))
        recipe._check_layout_unique(str(path) if path is not None else "recipe")
        return recipe

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
        key = schema.name_key(value)
        exact = [m.id for m in self.methods if m.id == value or schema.name_key(m.id) == key]
        if exact:
            return exact
        label = [m.id for m in self.methods if schema.name_key(m.label) == key]
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
        self,
        dataset=None,
        arch=None,
        norm=None,
        method=None,
        seeds=None,
        epochs=None,
        smoke=False,
        batch_size=None,
        generated_data=None,
        generated_fraction=None,
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
            generated_data: an `.npz` of generated images mixed into every
                training batch (`--generated-data`), instead of the recipe's
                `generated_data`; a recipe with `generated_fraction` and no
                file needs it (its runs' `generated["path"]` is None until
                then).
            generated_fraction: their share of each batch (default: the
                recipe's, else 0.7).

        Returns:
            A list of `RunSpec`, seed-major (all runs of the first seed come
            first, so a complete table with one seed exists early).
        """
        datasets = self._narrow("dataset", dataset, self.datasets, schema.canonical_recipe_dataset)
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
        generated = self._generated(generated_data, generated_fraction)
        fingerprint = self.fingerprint(epochs, batch_size, smoke)
        if generated is not None:  # recipes without generated data keep the fingerprint they had before it existed
            fingerprint["generated"] = dict(generated)
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
                            generated=None if generated is None else dict(generated),
                            fingerprint=dict(fingerprint),
                            run_dir=f"{m.id}/{run_cell(setup['dataset'], setup['arch'], n, smoke)}/seed{seed}",
                        )
                        planned[key] = spec
                        out.append(spec)
        return out

    def _generated(self, path, fraction):
        """The plan's generated data, `{"path", "fraction"}` or None: the recipe's, the arguments override."""
        recipe = generated_setting(self.config)
        if path is None and fraction is None:
            return recipe
        if path is None and recipe is None:
            raise RecipeError(
                f"generated_fraction={fraction!r} needs generated data: recipe {self.name!r} has none, so pass "
                "generated_data (--generated-data) too."
            )
        if fraction is None:
            fraction = schema.GENERATED_FRACTION if recipe is None else recipe["fraction"]
        where = f"recipe {self.name!r}"
        return {
            "path": os.fspath(path) if path is not None else recipe["path"],
            "fraction": schema.check_generated_fraction(where, fraction),
        }

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


def _format_result_line(r, recipe):
    head = r.get("method") or r.get("label")
    venue = f" ({r['venue']})" if r.get("venue") else ""
    where = "".join(f" {r[k]}" for k in ("dataset", "arch", "norm") if k in r)
    values = ", ".join(f"{metric_label(k)} {v:g}" for k, v in r.items() if schema.is_metric(k))
    setting = f" [{r['setting']}]" if r.get("setting") else ""
    return f"{head}{venue}{where}{setting}: {values}"


def canonical_options(method, norm):
    """Options without the values the preset uses anyway."""
    defaults = method_presets.option_defaults(method.preset)
    out = {}
    for key, value in method.options.items():
        if key == "l2_step_size" and norm != "l2":
            continue
        if key in defaults and defaults[key] == value:
            continue
        out[key] = value
    return dict(sorted(out.items()))
