"""Files written atomically and JSON read forgivingly (internal, a leaf).

Every file with results, state or a model is written through a temporary
file in the same folder and `os.replace`, so a reader never sees half a file
and an interruption leaves the previous version (or nothing) in place. The
temporary file is removed when the write fails.

This module imports nothing from `keras_rpat`.
"""

import contextlib
import json
import os
import tempfile

__all__ = [
    "atomic_path",
    "atomic_save_model",
    "atomic_write_json",
    "atomic_write_npz",
    "atomic_write_text",
    "jsonable",
    "read_json",
]


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yields a temporary path next to `path`; moves it onto `path` on success.

    The folder of `path` is created if needed. On any error (including
    `KeyboardInterrupt`) the temporary file is deleted and the error re-raised.

    Example:

    ```python
    with atomic_path("figure.png", suffix=".png") as tmp:
        fig.savefig(tmp)
    ```
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    """Writes `text` to `path` atomically (flushed and fsynced before the move)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_json(path, obj):
    """Writes `obj` as indented JSON (no NaN) to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_write_npz(path, **arrays):
    """`np.savez(path, **arrays)` atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def atomic_save_model(model, path):
    """`model.save(path)` through a temporary `.keras` file and `os.replace`."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"The model file name must end in `.keras`. Received: {path}")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def read_json(path):
    """The parsed JSON file at `path`, or `None` if it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def jsonable(obj):
    """`obj` as plain JSON types (arrays via `tolist()`, anything else via `str`)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
