"""Files written atomically and JSON read forgivingly (internal, a leaf).

Every file with results, state or a model is written through a temporary
file in the same folder and `os.replace`, so a reader never sees half a file
and an interruption leaves the previous version (or nothing) in place. The
temporary file is removed when the write fails.

This module imports nothing from `keras_rpat`.
"""

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
import warnings

__all__ = [
    "LOCK_FILE",
    "RunLock",
    "RunLockedError",
    "atomic_path",
    "atomic_save_model",
    "atomic_write_json",
    "atomic_write_npz",
    "atomic_write_text",
    "jsonable",
    "read_folder",
    "read_json",
    "replace_folder",
]


def _default_mode():
    """`0o666` less the process umask: the mode `open(path, "w")` would give (not mkstemp's 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yields a temporary path next to `path`; moves it onto `path` on success.

    The folder of `path` is created if needed. The file gets the permissions
    of a normal `open(path, "w")` (umask-respecting). On any error (including
    `KeyboardInterrupt`) the temporary file is deleted, the previous `path`
    is left as it was and the error re-raised; a full disk or a folder that
    cannot be written raises an `OSError` that names `path`.

    Example:

    ```python
    with atomic_path("figure.png", suffix=".png") as tmp:
        fig.savefig(tmp)
    ```
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix)
        os.close(fd)
        yield tmp
        if os.path.exists(tmp):
            os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise _write_error(path, e) from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_error(path, e):
    """An `OSError` (same errno) that names the file and what to do."""
    if getattr(e, "filename", None) == path and "Could not write" in str(e):
        return e
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free some disk space (or use an --out on another disk) and rerun; the previous version is intact"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose an output folder you can write to"
    else:
        fix = "check the folder and rerun; the previous version is intact"
    error = OSError(e.errno, f"Could not write {path}: {reason}. To fix: {fix}.")
    error.filename = path
    return error


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


def read_folder(folder):
    """`{name: bytes}` of the files in `folder` (not its subfolders); `None` when there is no such folder."""
    if not os.path.isdir(folder):
        return None
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[name] = f.read()
    return files


def replace_folder(folder, files):
    """Makes the files of `folder` exactly `files` (`read_folder`'s, or `None`: none); subfolders stay."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
    if files is not None:
        os.makedirs(folder, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def jsonable(obj):
    """`obj` as plain JSON types (arrays via `tolist()`, anything else via `str`)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ---------------------------------------------------------------------------
# One writer per run folder
# ---------------------------------------------------------------------------

LOCK_FILE = ".keras_rpat.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: `<folder>/.keras_rpat.lock` holding the owner's pid and host.

    A second process that tries to take it fails at once with
    `RunLockedError`, naming the owner. A lock left by a process that is gone
    (same host, pid no longer running) is taken over with a warning. The lock
    is re-entrant within one process (a recipe and its runs), and released
    (the file removed) on exit.

    Example:

    ```python
    with keras_rpat._io.RunLock("runs/x"):
        ...  # write into runs/x
    ```
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._owned = False

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _default_mode())
            except FileExistsError:
                if self._is_ours() or not self._take_over_if_stale():
                    return self
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            self._owned = True
            return self
        raise RunLockedError(f"Could not take the lock {self.path}; delete it if no other process uses the folder.")

    def _is_ours(self):
        held = read_json(self.path) or {}
        return held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()

    def _take_over_if_stale(self):
        """Removes a lock whose owner is gone (returns True); raises while the owner may be alive."""
        held = read_json(self.path)
        if held is None:
            # Being written this instant, or corrupt: look once more.
            time.sleep(0.2)
            held = read_json(self.path)
        host = socket.gethostname()
        if isinstance(held, dict) and held.get("host") == host and isinstance(held.get("pid"), int):
            if _pid_alive(held["pid"]):
                raise RunLockedError(
                    f"{self.folder} is in use by process {held['pid']} on {host} (since {held.get('since')}): "
                    "one writer per run folder. Wait for it to finish, or use another --out."
                )
        elif isinstance(held, dict) and held.get("host"):
            raise RunLockedError(
                f"{self.folder} is in use by process {held.get('pid')} on host {held.get('host')} "
                f"(since {held.get('since')}): one writer per run folder. Wait for it, use another --out, or "
                f"delete {self.path} if that process is gone."
            )
        warnings.warn(
            f"Taking over the stale lock {self.path} (left by process {(held or {}).get('pid')}, which is gone).",
            stacklevel=3,
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True

    def __exit__(self, *exc):
        if self._owned:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._owned = False
        return False
