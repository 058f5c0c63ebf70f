"""The methods, as data: one row per method (the shape of keras-hub's `*_presets.py`).

Each row of `method_presets` names the method's training attack and losses as
Keras serialisations (`{"class_name": ..., "config": {...}}`, the class a
`keras_rpat.attacks` / `keras_rpat.losses` class), its weight averaging, its
plain settings (the `presets.Preset` fields), the threat models' budgets, the
run options it accepts and a one-line description. Everything else reads this
table: `presets.get` builds the objects, `keras-rpat train --help` lists the
methods, the recipe schema checks a method and its options, the evaluation
takes its default budget. Adding a method is adding a row (CONTRIBUTING.md,
"Adding a method").

Importing this module loads neither Keras nor torch nor TensorFlow.
"""

from keras_rpat import _names

__all__ = [
    "BENCH_SETTINGS",
    "BUDGETS",
    "INGREDIENT_OPTIONS",
    "L2_STEP_SIZE",
    "OPTION_TYPES",
    "RPAT_LOSS",
    "RPAT_OPTIONS",
    "SOTAS_SETTINGS",
    "STRONGER_ATTACK",
    "base_method",
    "budget",
    "canonical_preset_name",
    "list_presets",
    "method_presets",
    "methods_with_option",
    "option_defaults",
    "preset_settings",
    "row",
]

# The paper's L2 attack step (docs/algorithms.md#l2-step-size: 15/255 is the upstream convention).
L2_STEP_SIZE = 32 / 255
# The threat models' budgets (the paper's): the training attack's and the evaluation's.
BUDGETS = {
    "linf": {"epsilon": 8 / 255, "step_size": 2 / 255, "num_steps": 10},
    "l2": {"epsilon": 128 / 255, "step_size": L2_STEP_SIZE, "num_steps": 10},
}
# Table 6's "$": from epoch 100 on, epsilon 10/255 and 12 steps (L-inf; the methods with the
# `stronger_attack` option).
STRONGER_ATTACK = {100: {"epsilon": 10 / 255, "num_steps": 12}}

# The Bench pipeline's settings: zero padding, no normalisation, 110 epochs, x0.1 at epochs 100 and 105,
# and none of the leaderboard's ingredients (INGREDIENT_OPTIONS): no label smoothing, heavy-ball momentum,
# weight decay on every variable. `warmup_fraction` is the cosine schedule's warm-up share and
# `ema_warmup_fraction` the dynamic EMA's (Wang et al. 2023: 2.5 % of training each).
BENCH_SETTINGS = {
    "post_step_clean_forward": False,
    "pipeline": "bench",
    "two_view": False,
    "epochs": 110,
    "schedule": "multistep",
    "milestones": (100, 105),
    "lr_factor": 1.5,
    "arch": "resnet18_bottleneck",
    "normalize": None,
    "label_smoothing": 0.0,
    "nesterov": False,
    "weight_decay_exclude": None,
    "warmup_fraction": 0.025,
    "ema_warmup_fraction": 0.025,
}
# The SOTAs pipeline's settings (ReBAT, RPAT++, WA): reflect padding, CIFAR-10 mean/std inside the
# model, 200 epochs of per-iteration piecewise decay, and ReBAT's extra clean forward after each step.
SOTAS_SETTINGS = dict(
    BENCH_SETTINGS,
    post_step_clean_forward=True,
    pipeline="sotas",
    epochs=200,
    schedule="piecewise",
    milestones=(100, 150),
    arch="preact_resnet18",
    normalize="cifar10",
)
# ReBAT's weight averaging: decay 0.999 from epoch WA_START_EPOCH (`trainer.WeightAveraging`).
SOTAS_WEIGHT_AVERAGING = {"decay": 0.999, "start_epoch": _names.WA_START_EPOCH}
# beta of the BoAT / RPAT++ term of ReBAT and RPAT++.
SOTA_BETA = 1.0

# The term `+rpat` adds to a method whose row has `"rpat": True`.
RPAT_LOSS = {"class_name": "RobustPerception", "config": {"alpha": 0.5, "weight": 1.0}}
# Its run options: option -> (its `RobustPerception` argument, the default).
RPAT_OPTIONS = {
    "proxy": ("proxy", "logits"),
    "distance": ("distance", "mse"),
    "alpha": ("alpha", RPAT_LOSS["config"]["alpha"]),
    "alpha_sampling": ("alpha_sampling", "fixed"),
    "rp_weight": ("weight", RPAT_LOSS["config"]["weight"]),
}
# The training ingredients of the leaderboard's recipes (Wang et al. 2023), run options of every method,
# and their "off" values: `presets.Preset.with_ingredients` applies them (docs/guides/leaderboard.md).
#   label_smoothing: of every cross-entropy term; lr_schedule: replaces the preset's ("cosine": cosine
#   decay with warm-up); nesterov: Nesterov momentum; weight_decay_exclude: variables without weight
#   decay; ema: tau of a weight average with the dynamic decay min(tau, (1 + t) / (10 + t)).
INGREDIENT_OPTIONS = {
    "label_smoothing": 0.0,
    "lr_schedule": None,
    "nesterov": False,
    "weight_decay_exclude": None,
    "ema": None,
}
# Every run option a recipe method (or `keras-rpat train`) may set, and its type: bool, float,
# "fraction" (a pixel budget such as 32/255) or the tuple of its valid strings. `l2_step_size` and the
# INGREDIENT_OPTIONS apply to every method, the RPAT_OPTIONS to a `+rpat` preset, the others to the
# rows that list them.
OPTION_TYPES = {
    "cutmix": bool,
    "stronger_attack": bool,
    "lr_factor": float,
    "beta": float,
    "proxy": _names.PROXIES,
    "distance": _names.DISTANCES,
    "alpha": float,
    "alpha_sampling": _names.ALPHA_SAMPLING,
    "rp_weight": float,
    "l2_step_size": "fraction",
    "teacher_training": tuple(_names.TEACHER_TRAINING),
    "label_smoothing": float,
    "lr_schedule": _names.LR_SCHEDULES,
    "nesterov": bool,
    "weight_decay_exclude": _names.WEIGHT_DECAY_EXCLUSIONS,
    "ema": float,
    "awp_gamma": float,
    "awp_warmup": int,
    "learning_rate": float,
}
# The run options of every method (any losses): the L2 step, adversarial weight perturbation
# (`keras_rpat.AWP`: `awp_gamma`, and `awp_warmup`, its first epoch of the run, 0 by default) and the
# SGD's (peak) learning rate (0.1 by default).
EVERY_METHOD_OPTIONS = ("l2_step_size", "awp_gamma", "awp_warmup", "learning_rate")


def _pgd(style, training=False, **config):
    return {"class_name": "PGD", "config": {"style": style, "training": training, **config}}


def _loss(class_name, **config):
    return {"class_name": class_name, "config": config}


# Each row:
#   metadata: the paper's name, a one-line description and aliases (other spellings of its name).
#   attack: the training attack (None: clean training). With "attack_takes_budget", `presets.get`
#       adds the threat model: `norm` and `budgets[norm]` (epsilon, step_size, num_steps).
#   losses: the `ViewLoss`es; `+rpat` (where "rpat" is True) appends RPAT_LOSS.
#   weight_averaging: `trainer.WeightAveraging`'s config, or None.
#   settings: the plain `presets.Preset` fields (pipeline, schedule, default architecture...).
#   budgets: the threat models' budgets of its attack and of its evaluation.
#   options: the run options it accepts (besides l2_step_size and the RPAT_OPTIONS), with their defaults.
method_presets = {
    "clean": {
        "metadata": {
            "label": "Clean",
            "description": "Standard training: cross-entropy on clean images.",
            "aliases": ("ce",),
        },
        "attack": None,
        "attack_takes_budget": False,
        "losses": [_loss("CrossEntropy", view="clean", name="ce")],
        "rpat": False,
        "weight_averaging": None,
        "settings": BENCH_SETTINGS,
        "budgets": BUDGETS,
        "options": {},
    },
    "random_noise": {
        "metadata": {
            "label": "Random noise",
            "description": "Cross-entropy on images with uniform noise U[-8/255, 8/255] (whatever the threat model).",
            "aliases": ("random",),
        },
        "attack": {"class_name": "RandomNoise", "config": {"epsilon": BUDGETS["linf"]["epsilon"]}},
        "attack_takes_budget": False,
        "losses": [_loss("CrossEntropy", view="adv", name="ce")],
        "rpat": False,
        "weight_averaging": None,
        "settings": BENCH_SETTINGS,
        "budgets": BUDGETS,
        "options": {},
    },
    "pgd_at": {
        "metadata": {
            "label": "PGD-AT",
            "description": "PGD-AT (Madry et al.): cross-entropy on PGD-10 adversarial examples.",
            "aliases": ("pgdat", "pgd"),
        },
        "attack": _pgd("advertorch"),
        "attack_takes_budget": True,
        "losses": [_loss("AdversarialCrossEntropy")],
        "rpat": True,
        "weight_averaging": None,
        "settings": BENCH_SETTINGS,
        "budgets": BUDGETS,
        "options": {},
    },
    "trades": {
        "metadata": {
            "label": "TRADES",
            "description": "TRADES (Zhang et al.): clean CE + 6 x KL to the KL attack's view.",
            "aliases": (),
        },
        "attack": _pgd("trades", loss="kl"),
        "attack_takes_budget": True,
        "losses": [_loss("TRADES", beta=6.0)],
        "rpat": True,
        "weight_averaging": None,
        "settings": BENCH_SETTINGS,
        "budgets": BUDGETS,
        "options": {"beta": 6.0},
    },
    "mart": {
        "metadata": {
            "label": "MART",
            "description": "MART (Wang et al.): boosted CE + 6 x misclassification-weighted KL.",
            "aliases": (),
        },
        "attack": _pgd("trades", loss="ce"),
        "attack_takes_budget": True,
        "losses": [_loss("MART", beta=6.0)],
        "rpat": True,
        "weight_averaging": None,
        "settings": BENCH_SETTINGS,
        "budgets": BUDGETS,
        "options": {"beta": 6.0},
    },
    "consistency_at": {
        "metadata": {
            "label": "Consistency-AT",
            "description": "Consistency-AT (Tack et al.): PGD-AT on two augmented views + JS consistency (T 0.5).",
            "aliases": ("consistency", "consistencyat", "cons_at"),
        },
        "attack": _pgd("advertorch"),
        "attack_takes_budget": True,
        "losses": [_loss("AdversarialCrossEntropy"), _loss("Consistency", weight=1.0, temperature=0.5)],
        "rpat": True,
        "weight_averaging": None,
        "settings": dict(BENCH_SETTINGS, two_view=True),
        "budgets": BUDGETS,
        "options": {},
    },
    "rebat": {
        "metadata": {
            "label": "ReBAT",
            "description": "ReBAT (Wang et al.): PGD-AT in training mode + BoAT, weight averaging (SOTAs pipeline).",
            "aliases": (),
        },
        "attack": _pgd("sotas", training=True),
        "attack_takes_budget": True,
        "losses": [
            _loss("AdversarialCrossEntropy"),
            _loss("BoAT", beta=SOTA_BETA, start_epoch=_names.WA_START_EPOCH),
        ],
        "rpat": False,
        "weight_averaging": SOTAS_WEIGHT_AVERAGING,
        "settings": SOTAS_SETTINGS,
        "budgets": BUDGETS,
        "options": {
            "cutmix": False,
            "stronger_attack": False,
            "lr_factor": SOTAS_SETTINGS["lr_factor"],
            "beta": SOTA_BETA,
            "teacher_training": "inference",
        },
    },
    "rpat_plus_plus": {
        "metadata": {
            "label": "RPAT++",
            "description": "RPAT++: ReBAT with its BoAT term replaced by the RPAT++ term (SOTAs pipeline).",
            "aliases": ("rpat++", "rpatplusplus", "rpat_pp"),
        },
        "attack": _pgd("sotas", training=True),
        "attack_takes_budget": True,
        "losses": [
            _loss("AdversarialCrossEntropy"),
            _loss("RPATPlusPlus", beta=SOTA_BETA, alpha=0.5, start_epoch=_names.WA_START_EPOCH),
        ],
        "rpat": False,
        "weight_averaging": SOTAS_WEIGHT_AVERAGING,
        "settings": SOTAS_SETTINGS,
        "budgets": BUDGETS,
        "options": {
            "cutmix": False,
            "stronger_attack": False,
            "lr_factor": SOTAS_SETTINGS["lr_factor"],
            "beta": SOTA_BETA,
            "teacher_training": "inference",
        },
    },
    "wa": {
        "metadata": {
            "label": "WA",
            "description": "PGD-AT in training mode with ReBAT's weight averaging (SOTAs pipeline).",
            "aliases": (),
        },
        "attack": _pgd("sotas", training=True),
        "attack_takes_budget": True,
        "losses": [_loss("AdversarialCrossEntropy")],
        "rpat": False,
        "weight_averaging": SOTAS_WEIGHT_AVERAGING,
        "settings": SOTAS_SETTINGS,
        "budgets": BUDGETS,
        "options": {"teacher_training": "inference"},
    },
}


def list_presets():
    """All preset names: each method, and `<method>+rpat` after each method that has it."""
    names = []
    for method, spec in method_presets.items():
        names.append(method)
        if spec["rpat"]:
            names.append(method + "+rpat")
    return names


def canonical_preset_name(name):
    """The canonical preset name of `name` or an alias (`"PGD-AT+RPAT"` -> `"pgd_at+rpat"`)."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "")
    rpat = False
    for suffix in ("+rpat", "_rpat"):
        if key.endswith(suffix) and key not in ("rpat_pp",):
            key, rpat = key[: -len(suffix)], True
    aliases = {alias: method for method, spec in method_presets.items() for alias in spec["metadata"]["aliases"]}
    key = aliases.get(key, aliases.get(key.replace("_", ""), key))
    full = key + ("+rpat" if rpat else "")
    if full not in list_presets():
        raise ValueError(f"Unknown preset: {name!r}. Valid presets: {', '.join(list_presets())}.")
    return full


def base_method(name):
    """The method of a canonical preset name without its `+rpat` (`"trades+rpat"` -> `"trades"`)."""
    return name[: -len("+rpat")] if name.endswith("+rpat") else name


def row(name):
    """The table row of a preset (any spelling; `"trades+rpat"` -> the row of `"trades"`)."""
    return method_presets[base_method(canonical_preset_name(name))]


def preset_settings(name):
    """The plain `Preset` fields of a preset: pipeline, epochs, schedule, milestones, lr_factor...

    The attack, the losses and the weight averaging are objects: `presets.get` builds them.
    """
    return dict(row(name)["settings"])


def budget(name, norm):
    """The budget (epsilon, step_size, num_steps) of a preset in a threat model (`"linf"` or `"l2"`)."""
    return dict(row(name)["budgets"][norm])


def option_defaults(name):
    """The value of every run option a preset uses when a run does not set it (`lr_schedule`: its schedule)."""
    defaults = {option: default for option, (_, default) in RPAT_OPTIONS.items()}
    defaults.update(INGREDIENT_OPTIONS, lr_schedule=row(name)["settings"]["schedule"])
    defaults.update(row(name)["options"])
    return defaults


def methods_with_option(option):
    """The methods that accept a run option (`"cutmix"` -> `["rebat", "rpat_plus_plus"]`)."""
    return [method for method, spec in method_presets.items() if option in spec["options"]]
