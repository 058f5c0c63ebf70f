"""The library's vocabulary as plain data (internal): the names of models, loss options, datasets, evaluations.

Importing this module loads neither Keras nor torch nor TensorFlow, so the
command line and the recipe schema check a name without them. Each list lives
here only: `models`, `losses`, `datasets`, `evaluation` and `autoattack`
import it from here. The methods (presets) are rows of `method_presets`.
"""

import re

from keras_rpat import _checks

__all__ = [
    "AA_BATCH_SIZE",
    "AA_VERSIONS",
    "ALPHA_SAMPLING",
    "DATASETS",
    "DISTANCES",
    "EVAL_BATCH_SIZE",
    "EVALUATION_ATTACKS",
    "LR_SCHEDULES",
    "MODEL_NAMES",
    "PERTURBATIONS",
    "PGD_EVAL_STEPS",
    "PROXIES",
    "TEACHER_TRAINING",
    "WA_START_EPOCH",
    "WEIGHT_DECAY_EXCLUSIONS",
    "canonical_model_name",
    "list_models",
    "parse_attacks",
    "pgd_evaluation",
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
    # RobustBench's networks beyond the paper's
    "preact_resnet18_robustbench",
    "dm_wide_resnet",
    "dm_wide_resnet28_10",
    "dm_wide_resnet34_10",
    "dm_wide_resnet34_20",
    "dm_wide_resnet70_16",
    "dm_preact_resnet18",
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
        "robustbenchpreactresnet18": "preact_resnet18_robustbench",
        "dmwrn": "dm_wide_resnet",
        "dmwrn2810": "dm_wide_resnet28_10",
        "dmwrn3410": "dm_wide_resnet34_10",
        "dmwrn3420": "dm_wide_resnet34_20",
        "dmwrn7016": "dm_wide_resnet70_16",
        "dmresnet18": "dm_preact_resnet18",
    }
)


def list_models():
    """Returns the canonical model names accepted by `keras_rpat.models.get`.

    Example:

    >>> keras_rpat.models.list_models()
    ['dm_preact_resnet18', 'dm_wide_resnet', 'dm_wide_resnet28_10', ..., 'wide_resnet34_10']
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
# `WeightAveraging(teacher_training=...)`. "first_epoch" is the reference code's (docs/algorithms.md#teacher-mode).
TEACHER_TRAINING = {"inference": False, "first_epoch": "first_epoch", "always": True}

# ---------------------------------------------------------------------------
# Optimisation (keras_rpat.optimizers; the presets' `schedule`, `weight_decay_exclude`)
# ---------------------------------------------------------------------------

LR_SCHEDULES = ("multistep", "piecewise", "cosine")
# The trainable variables `SGD(weight_decay_exclude=...)` leaves out of the weight decay.
WEIGHT_DECAY_EXCLUSIONS = ("batchnorm", "batchnorm_and_bias")

# ---------------------------------------------------------------------------
# Datasets and evaluations
# ---------------------------------------------------------------------------

# The names `keras_rpat.datasets.load` accepts (besides an `.npz` path).
DATASETS = ("cifar10", "cifar100", "tiny_imagenet", "synthetic")

EVALUATION_ATTACKS = ("clean", "pgd20", "autoattack")
# The reference protocol's PGD steps (PGD-20).
PGD_EVAL_STEPS = 20
ATTACK_ALIASES = {"clean": "clean", "autoattack": "autoattack", "aa": "autoattack"}
# PGD evaluations by name: `pgdN` / `cwN` (N steps; cw: the CW margin loss), `pgdNxR` / `cwNxR` (R restarts).
PGD_EVALUATION_LOSSES = {"pgd": "ce", "cw": "cw"}
_PGD_EVALUATION = re.compile(r"(pgd|cw)(?:-?([0-9]+))?(?:x([0-9]+))?")
_VALID_EVALUATIONS = (
    "clean, autoattack (aa), pgdN and cwN (N steps of PGD on the cross-entropy or the CW margin loss: pgd20, cw20), "
    "pgdNxR and cwNxR (R restarts, the worst case per image: pgd20x5)"
)
# The perturbations of the perception analysis (Figures 2 and 5).
PERTURBATIONS = ("random", "pgd20")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
# The reference evaluation's batch sizes (PGD and clean; AutoAttack).
# tf.distribute strategies of `--strategy` (one host's devices; the hosts of TF_CONFIG).
TF_STRATEGIES = ("mirrored", "multiworker")
# keras.distribution layouts of `--distribution` on jax (every device of the job, the batch split over them).
JAX_DISTRIBUTIONS = ("data_parallel",)

EVAL_BATCH_SIZE = 256
AA_BATCH_SIZE = 250


def pgd_label(loss, num_steps, restarts=1):
    """`"PGD-20"`, `"CW-20"`, `"PGD-20x5"`: an evaluation PGD's name in summaries."""
    return f"{'CW' if loss == 'cw' else 'PGD'}-{num_steps}" + (f"x{restarts}" if restarts > 1 else "")


def pgd_evaluation(name):
    """`(loss, num_steps, restarts)` of a canonical PGD evaluation name (`"cw20"` -> `("cw", 20, 1)`), else `None`."""
    match = _PGD_EVALUATION.fullmatch(name)
    if match is None:
        return None
    kind, steps, restarts = match.groups()
    return PGD_EVALUATION_LOSSES[kind], int(steps or PGD_EVAL_STEPS), int(restarts or 1)


def _canonical_evaluation(name):
    """`"PGD-20"` -> `"pgd20"`, `"pgd"` -> `"pgd20"`, `"cw20x1"` -> `"cw20"`, `"aa"` -> `"autoattack"`."""
    key = str(name).strip().lower()
    if key in ATTACK_ALIASES:
        return ATTACK_ALIASES[key]
    match = _PGD_EVALUATION.fullmatch(key)
    if match is None:
        raise ValueError(f"Unknown evaluation {name!r}. Valid: {_VALID_EVALUATIONS}.")
    kind, steps, restarts = match.groups()
    steps, restarts = int(steps or PGD_EVAL_STEPS), int(restarts or 1)
    if steps < 1 or restarts < 1:
        raise ValueError(
            f"Invalid evaluation {name!r}: its steps N and restarts R (pgdNxR) must be at least 1, e.g. pgd20x5."
        )
    return f"{kind}{steps}" + (f"x{restarts}" if restarts > 1 else "")


def parse_attacks(attacks):
    """Canonical evaluation names, in order, once each.

    `"aa"` is `"autoattack"`; a PGD evaluation is `pgdN` or `cwN` (N steps, default 20:
    `"pgd"` and `"PGD-20"` are `"pgd20"`), with R restarts `pgdNxR` (`"cw20x1"` is `"cw20"`).

    Args:
        attacks: a list or a comma-separated string.
    """
    attacks = _checks.split_list(attacks)
    out = []
    for name in attacks:
        key = _canonical_evaluation(name)
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError(f"`attacks` must name at least one of {list(EVALUATION_ATTACKS)}.")
    return out
