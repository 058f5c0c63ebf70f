"""Files that cannot be corrupted, and one writer per run folder (`keras_rpat._io`)."""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from testing import torch_only

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


# Processes that start together and race for one lock: each prints what it got.
_RACE_FOR_LOCK = (
    "import importlib.util, sys, time\n"
    "spec = importlib.util.spec_from_file_location('_io', {path!r})\n"
    "io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)\n"
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
    "try:\n"
    "    with io.RunLock(sys.argv[1]):\n"
    "        print('won', flush=True); time.sleep(1.0)\n"
    "except io.RunLockedError as e:\n"
    "    print('refused', e, flush=True)\n"
)


def test_processes_that_race_for_a_lock_leave_one_winner(tmp_path):
    """Six processes call `RunLock` at the same instant: one takes it, five are refused naming it."""
    code = _RACE_FOR_LOCK.format(path=_io.__file__)
    start = str(time.time() + 1.0)
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), start], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    said = {p.pid: p.communicate(timeout=60)[0].strip() for p in racers}
    winners = [pid for pid, line in said.items() if line == "won"]
    assert len(winners) == 1, said
    for pid, line in said.items():
        if pid != winners[0]:
            assert line.startswith("refused") and f"in use by process {winners[0]} on" in line, said
    assert not (tmp_path / "run" / _io.LOCK_FILE).exists()


def test_a_lock_no_process_holds_is_taken_over_even_if_its_pid_was_reused(tmp_path):
    """The OS lock decides, not the pid: a lock file naming a live process that does not hold it is stale."""
    folder = tmp_path / "run"
    folder.mkdir()
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "since": "then"}
    (folder / _io.LOCK_FILE).write_text(json.dumps(owner))
    with pytest.warns(UserWarning, match=rf"stale lock .*process {os.getppid()}"):
        with _io.RunLock(folder):
            assert json.loads((folder / _io.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match=r"Could not write .*\.keras_rpat\.lock: No space left on device.*free some"):
        _io.RunLock(tmp_path / "run").__enter__()
    assert list((tmp_path / "run").iterdir()) == []  # no empty lock file


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


@torch_only  # the lock does not depend on the backend; torch starts faster
def test_two_train_commands_on_one_folder_end_with_one_winner(tmp_path):
    """Two `keras-rpat train` processes started together on one --out (seeds 0 and 1, so the files
    tell whose they are): one finishes, the other is refused in one line naming the folder and the
    winner, and every file is the winner's."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "keras_rpat.cli", "train", "--method", "pgd_at", "--dataset", "synthetic"]
    command += ["--smoke", "--eval-attacks", "clean", "--checkpoints", "best", "-q", "--out", str(out)]
    racers = [
        subprocess.Popen(
            [*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for seed in (0, 1)
    ]
    outcomes = [(p.pid, seed, *p.communicate(timeout=300), p.returncode) for seed, p in enumerate(racers)]
    [(pid, seed, _, _, _)] = [o for o in outcomes if o[-1] == 0]
    [(_, _, _, refusal, code)] = [o for o in outcomes if o[-1] != 0]
    assert code == 1 and refusal.count("\n") == 1 and "Traceback" not in refusal, refusal
    assert refusal.startswith(f"Error: {out} is in use by process {pid} on {socket.gethostname()} (since "), refusal
    assert refusal.rstrip().endswith("one writer per run folder. Wait for it to finish, or use another --out."), refusal
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        ["best.keras", "config.json", "eval_best.json", "final.keras", "history.json", "results.json", "run.json"]
        + ["train_log.csv", "train_log.json", "trained.json", "training_curves.png"]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["run"]["seed"] == seed
    assert json.loads((out / "run.json").read_text())["spec"]["seed"] == seed


def test_a_run_the_disk_cannot_hold_is_refused_before_training(tmp_path, monkeypatch):
    """The free space is checked against the run's checkpoints and backups before the first step:
    one line naming the folder, the bytes free and needed, and the fix; nothing trained, no lock left."""
    from testing import invoke

    from keras_rpat.cli import main

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=65536))
    out = tmp_path / "run"
    result = invoke(main, ["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke", "-q", "--out", out])
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert re.fullmatch(
        rf"Error: {out} has 0\.1 MiB \(65,536 bytes\) free, but its checkpoints and backups need about "
        r"\d+\.\d MiB \([\d,]+ bytes\)\. To fix: free some disk space, or use an --out on another disk\.",
        line,
    ), line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "run.json"]


def test_a_full_disk_while_logging_names_the_file(tmp_path):
    """`train_log.csv` is appended to (not replaced): its write errors name it too."""
    from keras_rpat import callbacks

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    log = callbacks.CSVLog(str(tmp_path / "train_log.csv"))
    log.on_train_begin()
    log.csv_file.close()
    log.csv_file = FullDisk()
    with pytest.raises(_io.WriteError, match=r"Could not write .*train_log\.csv: No space left on device\. To fix"):
        log.on_epoch_end(0, {"loss": 1.0})


# ---------------------------------------------------------------------------- corrupt files of a run
def _smoke_spec():
    return recipes.single_run("pgd_at", "synthetic", smoke=True, eval_attacks=("clean",), checkpoints=("best",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "run"
    recipes.run_single(_smoke_spec(), folder, verbose=0)
    return folder


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished smoke run, to break."""
    return pathlib.Path(shutil.copytree(finished_run, tmp_path / "run"))


def _rerun(folder):
    return recipes.run_single(_smoke_spec(), folder, verbose=0)


def test_corrupt_files_of_a_finished_run_are_named_in_one_warning_each(run_copy, finished_run):
    (run_copy / "best.keras").write_bytes((run_copy / "best.keras").read_bytes()[:-100])
    (run_copy / "history.json").write_text('[{"epoch": 1, "cl')
    with pytest.warns(UserWarning) as caught:
        assert _rerun(run_copy)["skipped"]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{run_copy / 'best.keras'} is corrupt or truncated") and "--overwrite" in messages[0]
    assert messages[1].startswith(f"{run_copy / 'history.json'} is corrupt or truncated"), messages
    for name in ("best.keras", "history.json"):
        shutil.copy(finished_run / name, run_copy / name)
    (run_copy / "run.json").write_text("{")
    with pytest.warns(UserWarning, match=r"run\.json is corrupt or truncated \(not valid JSON\); rewriting it"):
        assert _rerun(run_copy)["skipped"]
    assert json.loads((run_copy / "run.json").read_text())["spec"]["method"] == "pgd_at"


def test_corrupt_files_of_an_unfinished_run_stop_it_naming_the_file_and_the_fix(run_copy):
    (run_copy / "results.json").unlink()
    (run_copy / "run.json").write_text("")
    with pytest.raises(recipes.RecipeError, match=r"run\.json is corrupt or truncated .*Delete it .*--overwrite"):
        _rerun(run_copy)
    (run_copy / "run.json").unlink()
    (run_copy / "history.json").write_text("[")
    with pytest.raises(recipes.RecipeError, match=r"history\.json is corrupt .*trained\.json says .*Delete both"):
        _rerun(run_copy)


def test_a_corrupt_results_file_is_rebuilt_from_the_run_with_a_warning(run_copy):
    want = json.loads((run_copy / "results.json").read_text())
    (run_copy / "results.json").write_text('{"format"')
    with pytest.warns(UserWarning, match=r"results\.json is corrupt or truncated .*writes it again"):
        got = _rerun(run_copy)
    assert got["complete"] and got["metrics"] == want["metrics"] and got["history"] == want["history"]
    assert not (run_copy / "backup").exists()  # not retrained


def test_the_report_names_a_corrupt_results_file_it_leaves_out(tmp_path):
    from testing import invoke

    from keras_rpat.cli import main

    recipe = recipes.load_recipe("table1")
    run = tmp_path / "pgd_at" / "cell" / "seed0"
    run.mkdir(parents=True)
    (run / "results.json").write_text("{")
    with pytest.warns(UserWarning, match=rf"Leaving out {run / 'results.json'}: it is corrupt .*run the recipe"):
        assert recipes.collect_results(recipe, tmp_path, fingerprint={}) == {}
    (tmp_path / "config.json").write_text("{")
    result = invoke(main, ["report", tmp_path])
    assert result.exit_code == 1 and "config.json is corrupt or truncated (not valid JSON). Delete it" in result.output
