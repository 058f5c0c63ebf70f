"""The PGD evaluation's state file: the results of the finished batches, so a killed evaluation resumes.

`keras_rpat.evaluation.evaluate(..., pgd_state_path=...)` (a recipe run
passes `<run>/pgd_state_<checkpoint>.json`) writes the file after every
batch: which images the attack has not fooled so far, how many images are
done, and the state of the attack's random generator (on torch also the
device generators behind it). A rerun with the same file skips the finished
batches and draws the same random starts for the others, so its result
equals an uninterrupted evaluation's; a kill loses at most the batch in
progress. The file also records what identifies the evaluation (the attack's
configuration, batch size, number of images and SHA-256 hashes of the
images, labels and weights): a file of another evaluation is refused with a
message that says what differs. Written atomically (`keras_rpat._io`).
"""

import json
import os

import numpy as np

from keras_rpat import _io
from keras_rpat import backend as rpat_backend
from keras_rpat.autoattack.state import sha256_arrays

__all__ = ["STATE_FORMAT", "StateFile", "evaluation_key"]

STATE_FORMAT = "keras_rpat.pgd_state"


def evaluation_key(attack, batch_size, model, x, y):
    """What identifies a PGD evaluation: the attack's configuration, batching, data and weights."""
    return {
        "attack": _io.jsonable(attack.get_config()),
        "batch_size": int(batch_size),
        "n": int(len(x)),
        "data_sha256": sha256_arrays([x, y]),
        "model_sha256": sha256_arrays(model.get_weights()),
    }


class StateFile:
    """The progress of one PGD evaluation, kept in `path`.

    Args:
        path: the JSON file (read when it exists, written by `save`).
        key: `evaluation_key(...)` of the evaluation being run.

    Attributes:
        done: images finished (a batch boundary); 0 for a new file.
    """

    def __init__(self, path, key):
        self.path = os.fspath(path)
        self.key = key
        state = self._load() if os.path.exists(self.path) else None
        # In a data-parallel job each rank keeps its own file; all resume from rank 0's
        # (ranks killed between different batches would otherwise attack different rows).
        self.state = rpat_backend.from_primary(state)
        self.done = 0 if self.state is None else int(self.state["done"])

    def _load(self):
        try:
            with open(self.path) as f:
                state = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"Could not read the PGD evaluation state file {self.path}: {type(e).__name__}: {e} (corrupt or "
                "truncated). Delete it to start the evaluation afresh."
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{self.path} is not a keras_rpat PGD evaluation state file (it was left untouched); pass a "
                "`pgd_state_path` that does not exist yet (the state is created there)."
            )
        different = [k for k in self.key if state.get(k) != self.key[k]]
        if different:
            raise ValueError(
                f"The PGD evaluation state file {self.path} belongs to another evaluation "
                f"({self._describe(state, different)}). Delete it to start afresh, or pass another `pgd_state_path`."
            )
        return state

    def _describe(self, state, different):
        words = {"data_sha256": "different images or labels", "model_sha256": "different model weights"}
        return ", ".join(words.get(k, f"{k}: file {state.get(k)!r} vs now {self.key[k]!r}") for k in different)

    def restore(self, correct, generator):
        """Fills `correct[:done]` from the file and puts `generator` where the evaluation stopped."""
        if self.state is None:
            return
        correct[: self.done] = np.asarray(self.state["correct"], dtype=bool)
        rpat_backend.set_generator_state(generator, self.state["random_state"])

    def save(self, done, correct, generator):
        """Records the first `done` results of `correct` and the generator's state, atomically."""
        self.done = int(done)
        self.state = {
            "format": STATE_FORMAT,
            "version": 1,
            **self.key,
            "done": self.done,
            "correct": [bool(c) for c in correct[: self.done]],
            "random_state": rpat_backend.get_generator_state(generator),
        }
        _io.atomic_write_json(self.path, self.state)
