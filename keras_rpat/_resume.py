"""The AutoAttack state file: what is done, so an interrupted run resumes (no torch).

The file records the evaluation's key (norm, budget, attacks, seed, batch
size, options and SHA-256 hashes of the data and the weights), the per-image
robust flags after every batch, the attacks finished and the position inside
the current one. A file of another evaluation is refused with a message that
says what differs.
"""

import hashlib
import json
import os

import numpy as np

from keras_rpat import _io

__all__ = ["StateFile", "check_state_file", "sha256_arrays"]

STATE_FORMAT = "keras_rpat.autoattack_state"


def sha256_arrays(arrays):
    """SHA-256 of arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def evaluation_key(config, model, x, y):
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


def new_state(key):
    return {
        "format": STATE_FORMAT,
        "version": 1,
        **key,
        "clean_accuracy": None,
        "robust": None,
        "done": [],
        "accuracy": {},
        "current": None,
        "complete": False,
    }


def check_state_file(path):
    """Refuses, before any work, a `path` that exists and is not an AutoAttack state file (it is left untouched)."""
    if path is not None and os.path.exists(path):
        _read_state(path)


def load_state(path, key):
    """The state in `path`; raises `ValueError` if it belongs to another evaluation."""
    state = _read_state(path)
    different = [k for k in key if state.get(k) != key[k]]
    if different:
        raise ValueError(
            f"The AutoAttack state file {path} belongs to another evaluation ({_describe(state, key, different)}). "
            "Delete it to start afresh, or pass another `state_path`."
        )
    return state


def _read_state(path):
    new_path = "pass a state path that does not exist yet (the state is created there), e.g. aa_state.json"
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"Could not read the AutoAttack state file {path}: {type(e).__name__}: {e}. If it is a state file cut "
            f"short by a crash, delete it to start the evaluation afresh; otherwise {new_path}."
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        # Another file (a result, a model...): never advise deleting it.
        raise ValueError(f"{path} is not a keras_rpat AutoAttack state file (it was left untouched); {new_path}.")
    return state


def _describe(state, key, different):
    hashed = ("data_sha256", "model_sha256")
    details = ", ".join(f"{k}: file {state.get(k)!r} vs now {key[k]!r}" for k in different if k not in hashed)
    if "data_sha256" in different:
        details += (", " if details else "") + "different images or labels"
    if "model_sha256" in different:
        details += (", " if details else "") + "different model weights"
    return details


class StateFile:
    """The state of one evaluation, kept in `path` (or in memory when `path` is `None`).

    Attributes:
        state: the dict written to the file.
        resumed: whether earlier progress (the clean pass at least) was loaded.
    """

    def __init__(self, path, config, model, x, y):
        self.path = path
        self.resumed = False
        if path is None:
            self.state = new_state({})
        elif os.path.exists(path):
            self.state = load_state(path, evaluation_key(config, model, x, y))
            self.resumed = self.state["robust"] is not None
        else:
            self.state = new_state(evaluation_key(config, model, x, y))

    def save(self):
        if self.path is not None:
            _io.atomic_write_json(self.path, self.state)
