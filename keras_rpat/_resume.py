"""State files of resumable evaluations: the work done so far, so a killed evaluation resumes.

Two evaluations keep one (`StateFile`), each a `Kind` of file:

* `PGD`: `keras_rpat.evaluation.evaluate(..., pgd_state_path=...)` (a recipe
  run passes `<run>/pgd_state_<checkpoint>.json`) records after every batch
  which images the attack has not fooled so far (`correct`), how many are done
  (`done`) and the state of the attack's random generator (`random_state`), so
  a rerun skips the finished batches and draws the same random starts for the
  others: its result equals an uninterrupted evaluation's.
* `AUTOATTACK`: `keras_rpat.autoattack.run_autoattack(..., state_path=...)`
  records the clean pass, the per-image robust flags after every batch, the
  attacks finished and the position inside the current one.

Each file also holds what identifies its evaluation (`pgd_key`,
`autoattack_key`: the attack's settings, the batch size and SHA-256 hashes
of the images, labels and weights): a file of another evaluation, or a file
that is not a state file, is refused with a message that says what differs,
and left untouched. Files are written atomically (`keras_rpat._io`). No
framework is imported here.
"""

import copy
import dataclasses
import hashlib
import json
import os

import numpy as np

from keras_rpat import _io

__all__ = ["AUTOATTACK", "PGD", "Kind", "StateFile", "autoattack_key", "check_state_file", "pgd_key", "sha256_arrays"]

# The fields whose difference is named in words rather than shown.
_HASHED = {"data_sha256": "different images or labels", "model_sha256": "different model weights"}


@dataclasses.dataclass(frozen=True)
class Kind:
    """What tells one evaluation's state files from another's.

    Attributes:
        format: the file's `"format"` field.
        name: the evaluation, in messages (`"PGD evaluation"`).
        option: the argument that names the file, in messages.
        new_path: what to pass instead of a file that is not a state file.
        if_unreadable: the advice after "Could not read ...: <error>".
        fresh: the fields a new state starts with, after the evaluation's key.
    """

    format: str
    name: str
    option: str
    new_path: str
    if_unreadable: str
    fresh: dict


PGD = Kind(
    format="keras_rpat.pgd_state",
    name="PGD evaluation",
    option="pgd_state_path",
    new_path="a `pgd_state_path` that does not exist yet (the state is created there)",
    if_unreadable=" (corrupt or truncated). Delete it to start the evaluation afresh.",
    fresh={"done": 0, "correct": [], "random_state": None},
)

_NEW_AA_PATH = "a state path that does not exist yet (the state is created there), e.g. aa_state.json"
AUTOATTACK = Kind(
    format="keras_rpat.autoattack_state",
    name="AutoAttack",
    option="state_path",
    new_path=_NEW_AA_PATH,
    if_unreadable=(
        ". If it is a state file cut short by a crash, delete it to start the evaluation afresh; "
        f"otherwise pass {_NEW_AA_PATH}."
    ),
    fresh={"clean_accuracy": None, "robust": None, "done": [], "accuracy": {}, "current": None, "complete": False},
)


def sha256_arrays(arrays):
    """SHA-256 of arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def pgd_key(attack, batch_size, model, x, y):
    """What identifies a PGD evaluation: the attack's configuration, batching, data and weights."""
    return {
        "attack": _io.jsonable(attack.get_config()),
        "batch_size": int(batch_size),
        "n": int(len(x)),
        "data_sha256": sha256_arrays([x, y]),
        "model_sha256": sha256_arrays(model.get_weights()),
    }


def autoattack_key(config, model, x, y):
    """What identifies an AutoAttack evaluation (`config`: an `AutoAttackConfig`)."""
    return {
        "norm": config.norm,
        "epsilon": float(config.epsilon),
        "attacks": list(config.attacks),
        "version": config.version,
        "seed": config.seed,
        "n": int(len(x)),
        "batch_size": int(config.batch_size),
        "options": config.options,
        "data_sha256": sha256_arrays([x, y]),
        "model_sha256": sha256_arrays(model.get_weights()),
    }


def check_state_file(path, kind):
    """Refuses, before any work, a `path` that exists and is not a `kind` state file (it is left untouched)."""
    if path is not None and os.path.exists(path):
        _read(os.fspath(path), kind)


def _read(path, kind):
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"Could not read the {kind.name} state file {path}: {type(e).__name__}: {e}{kind.if_unreadable}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != kind.format:
        # Another file (a result, a model...): never advise deleting it.
        raise ValueError(
            f"{path} is not a keras_rpat {kind.name} state file (it was left untouched); pass {kind.new_path}."
        )
    return state


def _describe(state, key, different):
    shown = [f"{k}: file {state.get(k)!r} vs now {key[k]!r}" for k in different if k not in _HASHED]
    return ", ".join(shown + [_HASHED[k] for k in _HASHED if k in different])


class StateFile:
    """The state of one evaluation, kept in `path` (or in memory when `path` is `None`).

    Args:
        path: the JSON file (read when it exists, written by `save`), or `None`.
        kind: `PGD` or `AUTOATTACK`.
        key: what identifies the evaluation (`pgd_key(...)`, `autoattack_key(...)`);
            a file holding another key is refused.

    Attributes:
        state: the dict written to the file: the one read, or a new one
            (`kind.fresh` after the key). The evaluation updates it, then calls `save`.
    """

    def __init__(self, path, kind, key):
        self.path = None if path is None else os.fspath(path)
        self.kind = kind
        if self.path is not None and os.path.exists(self.path):
            self.state = _read(self.path, kind)
            different = [k for k in key if self.state.get(k) != key[k]]
            if different:
                raise ValueError(
                    f"The {kind.name} state file {self.path} belongs to another evaluation "
                    f"({_describe(self.state, key, different)}). Delete it to start afresh, or pass another "
                    f"`{kind.option}`."
                )
        else:
            self.state = {"format": kind.format, "version": 1, **key, **copy.deepcopy(kind.fresh)}

    def save(self):
        """Writes `state` to `path`, atomically (nothing when `path` is `None`)."""
        if self.path is not None:
            _io.atomic_write_json(self.path, self.state)
