"""The library's vocabulary as plain data (internal): the names of models, presets, loss options, datasets, evaluations.

Importing this module loads neither Keras nor torch nor TensorFlow, so the
command line and the recipe schema check a name without them. Each list lives
here only: `models`, `presets`, `losses`, `datasets`, `evaluation` and
`autoattack` import it from here.
"""

from keras_rpat import _checks

__all__ = [
    "AA_BATCH_SIZE",
    "AA_VERSIONS",
    "ALPHA_SAMPLING",
    "BASE_METHODS",
    "DATASETS",
    "DISTANCES",
    "EVAL_BATCH_SIZE",
    "EVALUATION_ATTACKS",
    "L2_STEP_SIZE",
    "MODEL_NAMES",
    "PERTURBATIONS",
    "PGD_EVAL_STEPS",
    "PROXIES",
    "SOTA_BETA",
    "SOTA_METHODS",
    "TEACHER_TRAINING",
    "WA_START_EPOCH",
    "WEIGHT_AVERAGED",
    "base_method",
    "canonical_model_name",
    "canonical_preset_name",
    "list_models",
    "list_presets",
    "parse_attacks",
    "preset_settings",
]

# ---------------------------------------------------------------------------
# Models (each name is the builder function of the same name in `models`)
# ---------------------------------------------------------------------------

MODEL_NAMES = (
    "resnet18",
    "resnet18_bottleneck",
    "preact_resnet18",
    "wide_resnet34_10",
    "wide_resnet28_10",
    "small_cnn",
)


def _key(name):
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


MODEL_ALIASES = {_key(canonical): canonical for canonical in MODEL_NAMES}
MODEL_ALIASES.update(
    {
        "resnet18basic": "resnet18",
        "basicresnet18": "resnet18",
        "bottleneckresnet18": "resnet18_bottleneck",
        "benchresnet18": "resnet18_bottleneck",
        "preresnet18": "preact_resnet18",
        "preactivationresnet18": "preact_resnet18",
        "wrn3410": "wide_resnet34_10",
        "wideresnet34": "wide_resnet34_10",
        "wrn34": "wide_resnet34_10",
        "wrn2810": "wide_resnet28_10",
        "wideresnet28": "wide_resnet28_10",
        "wrn28": "wide_resnet28_10",
        "smallconvnet": "small_cnn",
    }
)


def list_models():
    """Returns the canonical model names accepted by `keras_rpat.models.get`.

    Example:

    >>> keras_rpat.models.list_models()
    ['preact_resnet18', 'resnet18', 'resnet18_bottleneck', 'small_cnn',
     'wide_resnet28_10', 'wide_resnet34_10']
    """
    return sorted(MODEL_NAMES)


def canonical_model_name(name):
    """Returns the canonical model name for `name` or an alias of it.

    Matching ignores case, `-` and `_` (`"PreActResNet-18"`,
    `"preactresnet18"` and `"preact_resnet18"` are the same model; `"wrn34_10"`
    is `"wide_resnet34_10"`).

    Args:
        name: A model name or alias.

    Returns:
        The canonical name, one of `keras_rpat.models.list_models()`.
    """
    if isinstance(name, str):
        canonical = MODEL_ALIASES.get(_key(name))
        if canonical is not None:
            return canonical
    raise ValueError(
        f"Unknown model name: {name!r}. Valid names are {list_models()} "
        "(case, '-' and '_' are ignored; aliases such as 'preactresnet18', "
        "'wrn34_10' and 'wrn28_10' are accepted)."
    )


# ---------------------------------------------------------------------------
# Loss options and their schedule
# ---------------------------------------------------------------------------

DISTANCES = ("mse", "kl", "js", "cosine")
ALPHA_SAMPLING = ("fixed", "beta-", "beta+")
PROXIES = ("logits", "penultimate", "third_to_last")
# The epoch the ReBAT / RPAT++ weight averaging and BoAT / RPAT++ terms start (0-based).
WA_START_EPOCH = 105
# BatchNorm mode of the weight-averaged teacher's forwards: a recipe / command-line value ->
# `WeightAveraging(teacher_training=...)`. "first_epoch" is the reference code's (REFERENCE §8 #12).
TEACHER_TRAINING = {"inference": False, "first_epoch": "first_epoch", "always": True}

# ---------------------------------------------------------------------------
# Presets: names and the plain fields of each (`presets.get` adds the objects)
# ---------------------------------------------------------------------------

BASE_METHODS = ("clean", "random_noise", "pgd_at", "trades", "mart", "consistency_at")
SOTA_METHODS = ("rebat", "rpat_plus_plus")
# The presets with ReBAT's weight averaging (decay 0.999 from WA_START_EPOCH).
WEIGHT_AVERAGED = SOTA_METHODS + ("wa",)
# beta of the BoAT / RPAT++ term of the SOTA presets.
SOTA_BETA = 1.0
# The paper's L2 attack step (REFERENCE §8 #7: 15/255 is the upstream convention).
L2_STEP_SIZE = 32 / 255

PRESET_ALIASES = {
    "pgdat": "pgd_at",
    "pgd": "pgd_at",
    "consistency": "consistency_at",
    "consistencyat": "consistency_at",
    "cons_at": "consistency_at",
    "rpat++": "rpat_plus_plus",
    "rpatplusplus": "rpat_plus_plus",
    "rpat_pp": "rpat_plus_plus",
    "ce": "clean",
    "random": "random_noise",
    "wa": "wa",
}

# The Bench pipeline's settings (the defaults of `presets.Preset`).
BENCH_SETTINGS = {
    "pipeline": "bench",
    "epochs": 110,
    "schedule": "multistep",
    "milestones": (100, 105),
    "lr_factor": 1.5,
}
# The SOTAs pipeline's settings (ReBAT, RPAT++, WA).
SOTAS_SETTINGS = dict(
    post_step_clean_forward=True,
    pipeline="sotas",
    epochs=200,
    schedule="piecewise",
    milestones=(100, 150),
    lr_factor=1.5,
    arch="preact_resnet18",
    normalize="cifar10",
)
# method -> the `Preset` fields it sets besides the Bench settings.
PRESET_SETTINGS = {
    "clean": {},
    "random_noise": {},
    "pgd_at": {},
    "trades": {},
    "mart": {},
    "consistency_at": {"two_view": True},
    "rebat": SOTAS_SETTINGS,
    "rpat_plus_plus": SOTAS_SETTINGS,
    "wa": SOTAS_SETTINGS,
}


def list_presets():
    """All preset names."""
    names = []
    for m in BASE_METHODS:
        names.append(m)
        if m not in ("clean", "random_noise"):
            names.append(m + "+rpat")
    return names + list(SOTA_METHODS) + ["wa"]


def canonical_preset_name(name):
    """The canonical preset name of `name` or an alias (`"PGD-AT+RPAT"` -> `"pgd_at+rpat"`)."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "")
    rpat = False
    for suffix in ("+rpat", "_rpat"):
        if key.endswith(suffix) and key not in ("rpat_pp",):
            key, rpat = key[: -len(suffix)], True
    key = PRESET_ALIASES.get(key, PRESET_ALIASES.get(key.replace("_", ""), key))
    full = key + ("+rpat" if rpat else "")
    if full not in list_presets():
        raise ValueError(f"Unknown preset: {name!r}. Valid presets: {', '.join(list_presets())}.")
    return full


def base_method(name):
    """The method of a canonical preset name without its `+rpat` (`"trades+rpat"` -> `"trades"`)."""
    return name[: -len("+rpat")] if name.endswith("+rpat") else name


def preset_settings(name):
    """The plain `Preset` fields of a preset: pipeline, epochs, schedule, milestones, lr_factor...

    The attack, the losses and the weight averaging are objects: `presets.get` builds them.
    """
    return dict(BENCH_SETTINGS, **PRESET_SETTINGS[base_method(canonical_preset_name(name))])


# ---------------------------------------------------------------------------
# Datasets and evaluations
# ---------------------------------------------------------------------------

# The names `keras_rpat.datasets.load` accepts (besides an `.npz` path).
DATASETS = ("cifar10", "cifar100", "tiny_imagenet", "synthetic")

EVALUATION_ATTACKS = ("clean", "pgd20", "autoattack")
# The reference protocol's PGD steps (PGD-20).
PGD_EVAL_STEPS = 20
ATTACK_ALIASES = {
    "clean": "clean",
    "pgd20": "pgd20",
    "pgd-20": "pgd20",
    "pgd": "pgd20",
    "autoattack": "autoattack",
    "aa": "autoattack",
}
# The perturbations of the perception analysis (Figures 2 and 5).
PERTURBATIONS = ("random", "pgd20")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
# The reference evaluation's batch sizes (PGD and clean; AutoAttack).
# tf.distribute strategies of `--strategy` (one host's devices; the hosts of TF_CONFIG).
TF_STRATEGIES = ("mirrored", "multiworker")

EVAL_BATCH_SIZE = 256
AA_BATCH_SIZE = 250


def parse_attacks(attacks):
    """Canonical evaluation names (`"pgd"` -> `"pgd20"`, `"aa"` -> `"autoattack"`), in order, once each.

    Args:
        attacks: a list or a comma-separated string.
    """
    attacks = _checks.split_list(attacks)
    out = []
    for name in attacks:
        key = ATTACK_ALIASES.get(str(name).lower())
        if key is None:
            raise ValueError(
                f"Unknown evaluation {name!r}. Valid: {list(EVALUATION_ATTACKS)} "
                "(comma-separated on the command line: clean,pgd20,autoattack)."
            )
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError(f"`attacks` must name at least one of {list(EVALUATION_ATTACKS)}.")
    return out
