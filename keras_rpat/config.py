"""Process-wide switches of keras_rpat, as `keras.config` holds Keras' own.

Each setter changes what later calls do by default (an explicit argument
always wins); the command line sets them from its flags (`--no-fast-path`,
`--sync-batchnorm`, `--allow-large-l2`).

Example:

```python
keras_rpat.config.set_fast_path_default(False)  # every later trainer and evaluation runs the Keras models
```
"""

from keras_rpat import _checks
from keras_rpat._checks import allow_large_l2_budgets

__all__ = [
    "allow_large_l2_budgets",
    "fast_path_default",
    "set_fast_path_default",
    "set_sync_batchnorm_default",
    "sync_batchnorm_default",
]

_FAST_PATH_DEFAULT = [True]
_SYNC_BATCHNORM_DEFAULT = [False]


def set_fast_path_default(enabled):
    """Sets what `RPATTrainer(fast_path=None)` means for trainers built
    afterwards, and whether evaluation and AutoAttack run lowered models."""
    _FAST_PATH_DEFAULT[0] = _checks.check_bool(enabled, "enabled")


def fast_path_default():
    """Whether the torch fast path is on by default (see `set_fast_path_default`)."""
    return _FAST_PATH_DEFAULT[0]


def set_sync_batchnorm_default(enabled):
    """Sets what `RPATTrainer(sync_batchnorm=None)` means for trainers built
    afterwards (the CLI's `--sync-batchnorm`)."""
    _SYNC_BATCHNORM_DEFAULT[0] = _checks.check_bool(enabled, "enabled")


def sync_batchnorm_default():
    """Whether data-parallel trainers synchronize BatchNorm by default (see `set_sync_batchnorm_default`)."""
    return _SYNC_BATCHNORM_DEFAULT[0]
