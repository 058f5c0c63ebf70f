"""Files that cannot be corrupted, and one writer per run folder (`keras_rpat._io`)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from keras_rpat import _io
from keras_rpat import recipes

# `_io` imports nothing from the package, so a helper process loads it alone (no Keras, no torch).
_HOLD_LOCK = (
    "import importlib.util, sys, time\n"
    "spec = importlib.util.spec_from_file_location('_io', {path!r})\n"
    "io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)\n"
    "lock = io.RunLock(sys.argv[1]).__enter__()\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def lock_holder(tmp_path):
    """Starts a process that holds the lock of `tmp_path / 'run'`; yields it (killed afterwards)."""
    code = _HOLD_LOCK.format(path=_io.__file__)
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    yield p
    p.kill()
    p.wait()


def test_written_files_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _io.atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        _io.atomic_write_text(tmp_path / "b.md", "# b\n")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert os.stat(tmp_path / "b.md").st_mode & 0o777 == 0o600  # the umask is respected


def test_full_disk_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    _io.atomic_write_json(path, {"version": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        OSError, match=r"Could not write .*results.json: No space left on device.*free some disk space"
    ) as e:
        _io.atomic_write_json(path, {"version": 2})
    assert e.value.errno == errno.ENOSPC and "previous version is intact" in str(e.value)
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_model_save_that_fails_halfway_keeps_the_previous_checkpoint(tmp_path):
    class HalfSaved:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "best.keras"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError, match="best.keras"):
        _io.atomic_save_model(HalfSaved(), path)
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]


def test_second_writer_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path, lock_holder):
    folder = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(_io.RunLockedError, match=rf"in use by process {lock_holder.pid} on {socket.gethostname()}"):
        _io.RunLock(folder).__enter__()
    assert time.monotonic() - start < 5  # no waiting for the owner
    assert json.loads((folder / _io.LOCK_FILE).read_text())["pid"] == lock_holder.pid

    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()
    with pytest.warns(UserWarning, match=rf"stale lock .*process {lock_holder.pid}, which is gone"):
        with _io.RunLock(folder):
            assert json.loads((folder / _io.LOCK_FILE).read_text())["pid"] == os.getpid()
            with _io.RunLock(folder):  # re-entrant within the owner
                pass
    assert not (folder / _io.LOCK_FILE).exists()


def test_lock_of_another_host_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / _io.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "now"}))
    with pytest.raises(_io.RunLockedError, match=r"process 1 on host elsewhere.*delete .*\.keras_rpat\.lock"):
        _io.RunLock(folder).__enter__()


def test_a_run_refuses_a_folder_another_process_writes(tmp_path, lock_holder):
    spec = recipes.single_run("pgd_at", "synthetic", smoke=True)
    with pytest.raises(_io.RunLockedError, match="one writer per run folder"):
        recipes.run_single(spec, tmp_path / "run", verbose=0)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [_io.LOCK_FILE]  # nothing else written


def test_replace_folder_makes_a_copy_of_the_files_read_and_keeps_subfolders(tmp_path):
    source, target = tmp_path / "rank0", tmp_path / "rank1"
    (source / "sub").mkdir(parents=True)
    (source / "weights.h5").write_bytes(b"\x00\x01rank 0")
    (source / "sub" / "nested").write_text("not copied")
    (target / "keep").mkdir(parents=True)
    (target / "stale.json").write_text("{}")
    files = _io.read_folder(source)
    assert files == {"weights.h5": b"\x00\x01rank 0"}
    _io.replace_folder(target, files)
    assert sorted(p.name for p in target.iterdir()) == ["keep", "weights.h5"]
    assert (target / "weights.h5").read_bytes() == b"\x00\x01rank 0"
    assert _io.read_folder(tmp_path / "missing") is None
    _io.replace_folder(target, None)  # rank 0 has no such folder: none of its files either
    assert sorted(p.name for p in target.iterdir()) == ["keep"]
