"""Checks of arguments shared by the whole package (internal, a leaf).

Numbers, comma-separated lists, the vocabulary of norms and datasets, and output
paths; images, labels and models are checked in `keras_rpat._data_checks`. Every
check raises a `ValueError` that says what was received and how to fix it.

This module imports nothing from `keras_rpat` and only NumPy at the top, so any
module may import it, the command line's checks included, without loading Keras.
"""

import math
import numbers
import os
import sys
import tempfile

import numpy as np

__all__ = [
    "DATASET_ALIASES",
    "L2_BUDGET_LIMIT",
    "NORMS",
    "NORM_ALIASES",
    "KERAS_BACKENDS",
    "allow_large_l2_budgets",
    "canonical_dataset",
    "canonical_norm",
    "check_keras_backend",
    "check_bool",
    "check_choice",
    "check_non_negative_int",
    "check_num_classes",
    "check_positive_int",
    "check_finite_number",
    "check_positive_number",
    "check_budget",
    "check_range",
    "check_writable_dir",
    "check_writable_file",
    "parse_epsilon",
    "split_list",
    "strided_indices",
]

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

NORMS = ("linf", "l2")
NORM_ALIASES = {
    "linf": "linf",
    "l_inf": "linf",
    "inf": "linf",
    "l-inf": "linf",
    "l2": "l2",
    "l_2": "l2",
    "2": "l2",
}

# Accepted spellings -> canonical dataset name (the only table of them).
DATASET_ALIASES = {
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "tiny-imagenet": "tiny_imagenet",
    "tinyimagenet": "tiny_imagenet",
    "tiny-imagenet-200": "tiny_imagenet",
}


def canonical_norm(norm):
    """`"linf"` or `"l2"` for any accepted spelling (`"Linf"`, `"l_inf"`, `"2"`...)."""
    key = str(norm).lower().replace(" ", "")
    if key not in NORM_ALIASES:
        raise ValueError(f"Unknown `norm`: {norm!r}. Expected one of {NORMS} ('linf' for L-infinity, 'l2' for L2).")
    return NORM_ALIASES[key]


def canonical_dataset(name):
    """The canonical dataset name for an accepted spelling (`"CIFAR-10"` -> `"cifar10"`).

    Unknown names are returned lower-cased and stripped; the caller decides
    whether they are valid (e.g. `.npz` paths are kept as given).
    """
    key = str(name).strip().lower()
    return DATASET_ALIASES.get(key, key)


# ---------------------------------------------------------------------------
# Numbers and lists
# ---------------------------------------------------------------------------


def parse_epsilon(value, name="epsilon"):
    """Parses `8/255`, `"8/255"`, `"0.031"` or a float into a float."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                num, den = float(num), float(den)
                if den == 0:
                    raise ValueError(
                        f"`{name}` divides by zero. Received: {name}={text!r}; write a fraction of the pixel "
                        "range with a non-zero denominator, such as '8/255'."
                    )
                value = num / den
            else:
                value = float(text)
        except ValueError as e:
            if "divides by zero" in str(e):
                raise
            raise ValueError(
                f"`{name}` must be a number or a fraction such as '8/255'. Received: {name}={text!r}"
            ) from None
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}") from None


def check_positive_number(value, name, allow_zero=False):
    """A pixel fraction (`8/255` or a float) that is finite and > 0 (or >= 0)."""
    value = parse_epsilon(value, name)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"`{name}` must be a finite number {bound}. Received: {name}={value}. Pixels are in "
            "[0, 1], so an L-inf budget of 8 pixel levels is 8/255."
        )
    return value


# Above any published L2 threat model (ImageNet's go up to 3.0, CIFAR's to 128/255).
L2_BUDGET_LIMIT = 10.0
_LARGE_L2_ALLOWED = [False]


KERAS_BACKENDS = ("torch", "tensorflow", "jax")


def check_keras_backend():
    """The Keras backend keras_rpat runs on; an `ImportError` that names an unsupported one and the fix.

    `KERAS_BACKEND` until Keras is imported (read without importing Keras,
    which fails obscurely on an unknown backend), then Keras' own choice.
    """
    backend = os.environ.get("KERAS_BACKEND")
    if "keras" in sys.modules or backend is None:
        import keras

        backend, received = keras.config.backend(), "keras.config.backend()"
    else:
        received = "KERAS_BACKEND"
    if backend not in KERAS_BACKENDS:
        raise ImportError(
            f"keras_rpat supports the Keras backends torch, tensorflow and jax. Received: {received}={backend!r}. "
            "Set KERAS_BACKEND=torch (the default), tensorflow or jax before importing Keras, or unset it."
        )
    return backend


def allow_large_l2_budgets(enabled=True):
    """Lets L2 budgets and steps above `L2_BUDGET_LIMIT` (10) through `check_budget` (the CLI's `--force`)."""
    if not isinstance(enabled, (bool, np.bool_)):
        raise ValueError(f"`enabled` must be True or False. Received: enabled={enabled!r}")
    _LARGE_L2_ALLOWED[0] = bool(enabled)


def check_budget(value, name, norm="linf", allow_zero=False):
    """An attack budget or step (`8/255` or a float) in the units of pixels in [0, 1].

    Finite and > 0 (>= 0 with `allow_zero`); for `norm="linf"` also <= 1, since
    a larger L-inf budget or step covers the whole pixel range (a value such as 8
    is almost surely meant as 8/255); for `norm="l2"` <= `L2_BUDGET_LIMIT` (a value
    such as 128 is almost surely meant as 128/255) unless `allow_large_l2_budgets()`.
    """
    value = check_positive_number(value, name, allow_zero=allow_zero)
    if norm == "linf" and value > 1:
        detail = f". Did you mean {value:g}/255?" if float(value).is_integer() else f" (= {value * 255:.4g}/255)."
        raise ValueError(
            f"`{name}` is an L-inf budget in units of the pixel range [0, 1], so it must be <= 1 (= 255/255). "
            f"Received: {name}={value:g}{detail}"
        )
    if norm == "l2" and value > L2_BUDGET_LIMIT and not _LARGE_L2_ALLOWED[0]:
        raise ValueError(
            f"`{name}` is an L2 budget in units of the pixel range [0, 1]; published L2 threat models stop at 3.0 "
            f"(ImageNet) and 128/255 (CIFAR), so a value above {L2_BUDGET_LIMIT:g} is almost surely in 0-255 units. "
            f"Received: {name}={value:g}. Did you mean {value:g}/255? To use it as given, call "
            "keras_rpat.attacks.allow_large_l2_budgets() first."
        )
    return value


def check_range(value, name, low=None, high=None, low_open=False, high_open=False):
    """`value` as a float if it is a finite real number in the given range (not a bool).

    Example: `check_range(beta, "beta", low=0)` (beta >= 0),
    `check_range(alpha, "alpha", 0, 1, low_open=True, high_open=True)` (0 < alpha < 1).
    """
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        raise ValueError(f"`{name}` must be {' and '.join(parts)}. Received: {name}={value:g}")
    return value


def check_choice(value, name, choices):
    """`value` if it is one of `choices`, else an error that lists them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def check_positive_int(value, name, allow_none=False):
    """`value` as an `int` if it is an integer >= 1 (not a bool); `None` if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_non_negative_int(value, name):
    """`value` as an `int` if it is an integer >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. Received: {name}={value!r}")
    return int(value)


def check_finite_number(value, name):
    """`value` as a float if it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    return float(value)


def split_list(text):
    """`"a, b,,c"` -> `["a", "b", "c"]`; a list or tuple is returned as a list."""
    if isinstance(text, (list, tuple)):
        return list(text)
    return [v for v in str(text).replace(" ", "").split(",") if v]


def strided_indices(total, n, name="n"):
    """`n` evenly strided indices of `range(total)` (class-sorted test sets); `None` if `n` is."""
    if n is None:
        return None
    n = check_positive_int(n, name)
    if n > total:
        raise ValueError(f"`{name}` must be at most the number of examples ({total}). Received: {name}={n}")
    return (np.arange(n, dtype=np.int64) * total) // n


# ---------------------------------------------------------------------------
# Output paths
# ---------------------------------------------------------------------------


def check_writable_dir(path, name="out"):
    """The absolute path of an output folder that exists and is writable, or can be created.

    Checked before any work starts: nothing is created (a temporary file is
    written and removed in the nearest existing folder, which also catches
    read-only file systems).
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`{name}` must be a folder, but {path} is a file. Pass a folder path, or move the file.")
    _check_can_write(path, name, kind="folder")
    return path


def check_writable_file(path, name="out"):
    """The absolute path of an output file whose folder is writable (or can be created); not a folder."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path):
        raise ValueError(f"`{name}` must be a file path, but {path} is a folder. Pass a file name such as result.json.")
    _check_can_write(os.path.dirname(path), name, kind="file", target=path)
    return path


def _check_can_write(folder, name, kind, target=None):
    target = target or folder
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"`{name}`={target} cannot be created: {existing} is a file, not a folder. Choose another {kind}."
        )
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".keras_rpat_write_check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(
            f"`{name}`={target} is not writable ({existing}: {e.strerror}). Choose a {kind} you can write to."
        ) from None


# ---------------------------------------------------------------------------
# More arguments, and inputs that are legal but almost surely a mistake
# ---------------------------------------------------------------------------


def check_bool(value, name):
    """`value` as a `bool` if it is `True` or `False` (a NumPy bool too); not a string or a number."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def check_num_classes(value, name="num_classes"):
    """An integer >= 2: a classifier of one class is always right, so its accuracy means nothing."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2:
        raise ValueError(
            f"`{name}` must be an integer >= 2 (a one-class classifier is always right, so its accuracy "
            f"means nothing). Received: {name}={value!r}"
        )
    return int(value)
