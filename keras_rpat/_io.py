"""Files written atomically and JSON read forgivingly (internal, a leaf).

Every file with results, state or a model is written through a temporary
file in the same folder and `os.replace`, so a reader never sees half a file
and an interruption leaves the previous version (or nothing) in place. The
temporary file is removed when the write fails.

This module imports nothing from `keras_rpat`.
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import warnings

__all__ = [
    "LOCK_FILE",
    "DiskSpaceError",
    "WriteError",
    "RunLock",
    "RunLockedError",
    "atomic_path",
    "atomic_save_model",
    "atomic_write_json",
    "atomic_write_npz",
    "atomic_write_text",
    "check_free_space",
    "jsonable",
    "read_folder",
    "read_json",
    "replace_folder",
    "write_error",
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
        raise write_error(path, e) from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class WriteError(OSError):
    """A file could not be written: the message names it and the fix (the `errno` of the cause is kept)."""

    def __str__(self):
        return self.strerror


def write_error(path, e):
    """An `OSError` (same errno) that names the file `path` being written when `e` happened, and what to do."""
    if isinstance(e, WriteError):
        return e
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free some disk space (or use an --out on another disk) and rerun; the previous version is intact"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose an output folder you can write to"
    else:
        fix = "check the folder and rerun; the previous version is intact"
    error = WriteError(e.errno, f"Could not write {path}: {reason}. To fix: {fix}.")
    error.filename = path
    return error


class DiskSpaceError(WriteError):
    """A folder's disk has less free space than what is about to be written there (errno `ENOSPC`)."""


def check_free_space(folder, needed, what):
    """Raises `DiskSpaceError` (naming `folder`, the bytes free and needed, and the fix) when the disk
    of `folder` has less than `needed` bytes free for `what` (e.g. "this run's checkpoints and backups")."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskSpaceError(
            errno.ENOSPC,
            f"{folder} has {_megabytes(free)} free, but {what} need about {_megabytes(needed)}. To fix: free some "
            "disk space, or use an --out on another disk.",
        )


def _megabytes(size):
    return f"{size / 2**20:.1f} MiB ({size:,} bytes)"


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
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: `<folder>/.keras_rpat.lock`, an OS file lock
    (`fcntl.flock`) on a file that holds the owner's pid and host.

    A second process that tries to take it fails at once with
    `RunLockedError`, naming the owner. The operating system releases the lock
    of a process that dies, so a lock file left by a killed process is taken
    over with a warning (a reused pid cannot keep it); a lock file written on
    another host is refused (its process may be alive there). The lock file is
    never left empty: when its owner cannot be written (a full disk) it is
    removed and the error names it. The lock is re-entrant within one process
    (a recipe and its runs), and released (the file removed) on exit.

    Example:

    ```python
    with keras_rpat._io.RunLock("runs/x"):
        ...  # write into runs/x
    ```
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._fd = None

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        if self._is_ours():
            return self
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _default_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._in_use(self._live_owner()) from None
            if not _same_file(fd, self.path):  # its owner released it between our open and flock: again
                os.close(fd)
                continue
            try:
                self._check_left_by_this_host(_read_owner(fd))
                self._write_owner(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise RunLockedError(f"Could not take the lock {self.path}; delete it if no other process uses the folder.")

    def _is_ours(self):
        held = read_json(self.path) or {}
        return held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()

    def _live_owner(self):
        """The lock file's owner record, once its owner has written it (the lock may be a moment old)."""
        for _ in range(20):
            held = read_json(self.path)
            if isinstance(held, dict) and (held.get("host") != socket.gethostname() or _pid_alive(held.get("pid"))):
                return held
            time.sleep(0.05)
        return held if isinstance(held, dict) else {}

    def _in_use(self, held):
        host = held.get("host")
        if host == socket.gethostname():
            where = f"process {held.get('pid')} on {host}"
        elif host:
            where = f"process {held.get('pid')} on host {host}"
        else:
            where = "another process"
        return RunLockedError(
            f"{self.folder} is in use by {where} (since {held.get('since')}): one writer per run folder. "
            "Wait for it to finish, or use another --out."
        )

    def _check_left_by_this_host(self, held):
        """Warns that a lock left by a process that is gone is taken over; refuses one written on another host."""
        if not held:
            return
        if held.get("host") not in (None, socket.gethostname()):
            raise RunLockedError(
                f"{self.folder} is in use by process {held.get('pid')} on host {held.get('host')} "
                f"(since {held.get('since')}): one writer per run folder. Wait for it, use another --out, or "
                f"delete {self.path} if that process is gone."
            )
        warnings.warn(
            f"Taking over the stale lock {self.path} (left by process {held.get('pid')}, which is gone).",
            stacklevel=3,
        )

    def _write_owner(self, fd):
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode(), 0)
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # no empty lock left behind
            raise write_error(self.path, e) from e

    def __exit__(self, *exc):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # before the close, which releases the lock
            os.close(self._fd)
            self._fd = None
        return False


def _same_file(fd, path):
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _read_owner(fd):
    """The owner record in the lock file `fd` (`{}` when empty or unreadable)."""
    try:
        data = os.pread(fd, 4096, 0)
        held = json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}
