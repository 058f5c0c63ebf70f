"""AutoAttack's vocabulary and argument checks (no torch, no pyautoattack).

Re-exported by the facade `keras_rpat.autoattack`; the cascade and the
subprocess import from here so that no module of the package imports the
facade back.
"""

import dataclasses
import math
import numbers

from keras_rpat import _checks
from keras_rpat._names import AA_BATCH_SIZE
from keras_rpat._names import AA_VERSIONS

__all__ = [
    "AA_ATTACKS",
    "AA_BATCH_SIZE",
    "AA_NORMS",
    "AA_VERSIONS",
    "AutoAttackConfig",
    "AutoAttackWarning",
    "VERSION_ATTACKS",
    "check_options",
    "default_version",
    "import_autoattack",
    "resolve_attacks",
]

AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
VERSION_ATTACKS = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
    "rand": ["apgd-ce", "apgd-dlr"],
}
AA_NORMS = {"linf": "Linf", "l2": "L2"}
# `options` keys -> the AutoAttack component they configure.
COMPONENTS = {
    "apgd": "apgd",
    "apgd-ce": "apgd",
    "apgd-dlr": "apgd",
    "apgd_targeted": "apgd_targeted",
    "apgd-t": "apgd_targeted",
    "fab": "fab",
    "fab-t": "fab",
    "square": "square",
}

# The numeric settings `options` may change, per component (pyautoattack 0.2's constructor arguments).
SETTINGS = {
    "apgd": ("n_iter", "n_restarts", "eot_iter", "rho"),
    "apgd_targeted": ("n_iter", "n_restarts", "eot_iter", "rho", "n_target_classes"),
    "fab": ("n_iter", "n_restarts", "alpha_max", "eta", "beta", "n_target_classes"),
    "square": ("n_queries", "n_restarts", "p_init"),
}


class AutoAttackWarning(UserWarning):
    """A sanity-check warning of AutoAttack (see its `flags_doc.md`)."""


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """The validated settings of one AutoAttack evaluation (see `run_autoattack`).

    Built by `run_autoattack`; the cascade and the subprocess read it, and the
    subprocess receives it as JSON (`dataclasses.asdict`).
    """

    norm: str
    epsilon: float
    version: str
    attacks: tuple
    batch_size: int
    seed: int = None
    options: dict = None
    data_format: str = "channels_last"
    state_path: str = None
    verbose: bool = False
    return_adversarial: bool = True

    @classmethod
    def from_dict(cls, data):
        return cls(**{**data, "attacks": tuple(data["attacks"])})


def import_autoattack():
    """Imports `pyautoattack`, or raises an `ImportError` that names the package."""
    try:
        import pyautoattack
    except ImportError as e:
        raise ImportError(
            "AutoAttack evaluation needs the `pyautoattack` package. Install it with `pip install pyautoattack`."
        ) from e
    return pyautoattack


def resolve_attacks(version="standard", attacks_to_run=None):
    """Returns the list of AutoAttack attacks of a version (or a custom list).

    Args:
        version: `"standard"`, `"plus"`, `"rand"` or `"custom"`.
        attacks_to_run: for `"custom"`, a list (or comma-separated string) of
            `"apgd-ce"`, `"apgd-t"`, `"fab-t"`, `"square"`, `"apgd-dlr"`,
            `"fab"`.
    """
    if version not in AA_VERSIONS:
        raise ValueError(f"Unknown AutoAttack `version`: {version!r}. Expected one of {AA_VERSIONS}.")
    if attacks_to_run is not None:
        attacks_to_run = _attack_names(attacks_to_run)
    if version == "custom":
        if attacks_to_run is None:
            raise ValueError(
                "version='custom' needs `attacks_to_run`, e.g. "
                "attacks_to_run=['apgd-ce', 'apgd-t']. Valid names: " + ", ".join(AA_ATTACKS)
            )
        return attacks_to_run
    if attacks_to_run is not None and attacks_to_run != VERSION_ATTACKS[version]:
        raise ValueError(
            f"AutoAttack version={version!r} runs {VERSION_ATTACKS[version]}; to run "
            f"{attacks_to_run}, pass version='custom'."
        )
    return list(VERSION_ATTACKS[version])


def _attack_names(attacks_to_run):
    names = []
    for name in _checks.split_list(attacks_to_run):
        key = str(name).lower()
        if key not in AA_ATTACKS:
            raise ValueError(f"Unknown AutoAttack attack {name!r}. Valid: {list(AA_ATTACKS)}.")
        if key not in names:
            names.append(key)
    if not names:
        raise ValueError(f"`attacks_to_run` must name at least one of {list(AA_ATTACKS)}.")
    return names


def default_version(attacks_to_run=None):
    """`"standard"`, or `"custom"` when `attacks_to_run` differs from the standard attacks."""
    if attacks_to_run is not None and resolve_attacks("custom", attacks_to_run) != VERSION_ATTACKS["standard"]:
        return "custom"
    return "standard"


def check_options(options):
    """Per-attack settings keyed by AutoAttack component (`{"apgd": {"n_iter": 10}}`)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(
            f"`options` must be a dict such as {{'apgd': {{'n_iter': 10}}}}. Received: options={options!r}"
        )
    out = {}
    for key, values in options.items():
        component = COMPONENTS.get(str(key).lower())
        if component is None or not isinstance(values, dict):
            raise ValueError(
                f"`options` maps one of {sorted(set(COMPONENTS))} to a dict of attack "
                f"attributes. Received: {key!r}: {values!r}"
            )
        unknown = sorted(set(values) - set(SETTINGS[component]))
        if unknown:
            raise ValueError(
                f"AutoAttack's {key} has no setting {unknown[0]!r}. Received: {key}.{unknown[0]}. "
                f"Valid settings of {key}: {', '.join(SETTINGS[component])}."
            )
        out.setdefault(component, {}).update({name: _check_setting(key, name, v) for name, v in values.items()})
    return out


def _check_setting(component, name, value):
    """A number; `n_*` settings (iterations, restarts, queries, classes) are integers >= 1."""
    label = f"{component}.{name}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(
            f"AutoAttack setting {label} must be a number. Received: {label}={value!r} (e.g. {component}.n_iter=10)."
        )
    if str(name).startswith("n_") and (not float(value).is_integer() or value < 1):
        raise ValueError(f"AutoAttack setting {label} must be an integer >= 1. Received: {label}={value!r}")
    return int(value) if str(name).startswith("n_") else value
