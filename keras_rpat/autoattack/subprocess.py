"""AutoAttack under a backend other than torch: the cascade in a PyTorch subprocess (no torch here).

The model is saved to a temporary `.keras` file (Keras files are
backend-independent), the images and the `AutoAttackConfig` next to it, and
`keras_rpat.autoattack.cascade.subprocess_main` evaluates them with
`KERAS_BACKEND=torch`. AutoAttack's warnings and errors come back to the
caller as `AutoAttackWarning`s and exceptions of the same kind.

In a tf.distribute job of N replicas (`keras_rpat.backend.replica_processes`)
each TensorFlow process starts one subprocess per local replica instead, with
the variables `torchrun` would give it (rank = the replica's global index), so
that they form one `torch.distributed` job of N ranks and the cascade deals its
batches to them as under torchrun: every subprocess ends with the one-device
result. Global rank 0 prints; local subprocess 0 writes the state file and
returns the result, the others keep their state in memory (on resume they take
the furthest state, `torch_distributed.most_advanced`). One that fails stops
its siblings.
"""

import collections
import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import warnings

import keras
import numpy as np

from keras_rpat.autoattack.config import AutoAttackWarning
from keras_rpat.backend import TORCHRUN_VARIABLES

__all__ = ["exit_with_parent", "run"]

_ENTRY = (
    "import sys; from keras_rpat.autoattack.subprocess import exit_with_parent; exit_with_parent(); "
    "from keras_rpat.autoattack.cascade import subprocess_main; sys.exit(subprocess_main(*sys.argv[1:]))"
)
_ERRORS = {"ValueError": ValueError, "ImportError": ImportError}


def run(model, x, y, config, replicas=None):
    """Runs the cascade in PyTorch subprocesses; returns `(robust_accuracy_percent, x_adv)`.

    Args:
        model: a Keras model (any backend) that can be saved as `.keras`.
        x, y: checked images (the model's layout) and int64 labels.
        config: an `AutoAttackConfig`.
        replicas: this worker's replicas in a tf.distribute job
            (`keras_rpat.backend.tensorflow_distributed.ReplicaProcesses`): one
            subprocess each, joined into one `torch.distributed` job; `None`: one
            subprocess, alone.
    """
    with tempfile.TemporaryDirectory(prefix="keras_rpat_autoattack_") as tmp:
        _write_inputs(tmp, model, x, y)
        jobs = []
        try:
            if replicas is None:
                _write_config(tmp, config)
                jobs.append(_Subprocess(tmp, tmp, _environment(), config.verbose, "its PyTorch subprocess"))
            else:
                for local, rank in enumerate(replicas.ranks):
                    folder = os.path.join(tmp, f"replica{local}")
                    os.mkdir(folder)
                    # One writer per file: local subprocess 0 keeps the caller's state file.
                    _write_config(folder, config if local == 0 else dataclasses.replace(config, state_path=None))
                    what = f"the PyTorch subprocess of rank {rank} (of {replicas.world_size} replicas)"
                    env = _environment(replicas, local)
                    jobs.append(_Subprocess(folder, tmp, env, config.verbose and rank == 0, what, replica=True))
            reported, stopped = _wait(jobs)
        finally:
            for job in jobs:
                job.stop()
        return _read_result(reported, stopped)


def exit_with_parent():
    """In the subprocess: exit at once when the parent dies, so a killed run leaves no orphan behind.

    The parent holds the write end of the subprocess' stdin until it has waited for it; end of file means it is
    gone (a SIGKILL, the OOM killer). An orphan would go on writing the AutoAttack state file that the rerun
    resumes from.
    """

    def watch():
        sys.stdin.buffer.read()
        os._exit(1)

    threading.Thread(target=watch, name="keras_rpat-exit-with-parent", daemon=True).start()


def _write_inputs(folder, model, x, y):
    try:
        model.save(os.path.join(folder, "model.keras"))
    except Exception as e:
        raise ValueError(
            f"AutoAttack under the {keras.config.backend()} backend evaluates the model "
            "in a PyTorch subprocess and needs to save it as a .keras file, which "
            f"failed: {type(e).__name__}: {e}. Make the model serialisable (register "
            "custom layers with keras.saving.register_keras_serializable) or run with "
            "KERAS_BACKEND=torch."
        ) from e
    np.savez(os.path.join(folder, "data.npz"), x=x, y=y)


def _write_config(folder, config):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f)


def _environment(replicas=None, local=0):
    """The subprocess' environment: torch, and torchrun's variables for local replica `local` of `replicas`."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env["KERAS_BACKEND"] = "torch"
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if replicas is None:
        return env
    # One backend for the job: nccl (each subprocess on cuda:LOCAL_RANK, its replica's GPU) when every
    # replica has a GPU, else gloo on the CPU.
    on_cpu = None in replicas.gpus
    env.update(
        RANK=str(replicas.ranks[local]),
        WORLD_SIZE=str(replicas.world_size),
        LOCAL_RANK=str(local if on_cpu else replicas.gpus[local]),
        LOCAL_WORLD_SIZE=str(len(replicas.ranks)),
        MASTER_ADDR=replicas.master_addr,
        MASTER_PORT=str(replicas.master_port),
    )
    if on_cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        # The local subprocesses share the cores (torchrun sets one thread per rank).
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(replicas.ranks))))
    return env


class _Subprocess:
    """One PyTorch subprocess on `folder`; a thread drains its stdout (forwarded when `verbose`,
    through `sys.stdout` so notebooks and Click runners see it) and keeps the last lines."""

    def __init__(self, folder, inputs, env, verbose, what, replica=False):
        self.folder = folder
        self.what = what  # for error messages
        self.replica = replica  # one of a tf.distribute job's
        self.tail = collections.deque(maxlen=25)
        self.err = open(os.path.join(folder, "stderr.txt"), "w+")
        arguments = [folder] if inputs == folder else [folder, inputs]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, *arguments],
            env=env,
            stdin=subprocess.PIPE,  # kept open while this process lives (see `exit_with_parent`)
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.verbose = verbose
        self.reader = None
        self.closed = False

    def drain(self, finished):
        """Starts the thread that reads the output and puts `self` into `finished` when the process exits."""

        def read():
            for line in self.proc.stdout:
                self.tail.append(line.rstrip("\n"))
                if self.verbose:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            self.proc.wait()
            finished.put(self)

        self.reader = threading.Thread(target=read, name="keras_rpat-autoattack-output", daemon=True)
        self.reader.start()

    def close(self):
        """After the process exited: closes its stdin, adds the end of its stderr to `tail`."""
        if self.reader is not None:
            self.reader.join()
        self.proc.stdin.close()
        self.err.seek(0)
        self.tail.extend(self.err.read().strip().splitlines()[-25:])
        self.err.close()
        self.closed = True

    def stop(self):
        """Kills the process if it still runs (a sibling failed, or the parent was interrupted)."""
        if not self.closed:
            self.proc.kill()
            self.proc.wait()
            self.close()

    def failed(self):
        """Whether it exited without a result, or with an error in it."""
        result = _load_result(self.folder)
        return self.proc.returncode != 0 or result is None or bool(result.get("error"))


def _wait(jobs):
    """Waits for the subprocesses until one fails or all have succeeded.

    Returns `(job, stopped)`: the first one that failed and whether others still ran
    (the caller stops them), else `(jobs[0], False)` (the local subprocess 0 reports).
    """
    finished = queue.Queue()
    for job in jobs:
        job.drain(finished)
    for count in range(1, len(jobs) + 1):
        job = finished.get()
        job.close()
        if job.failed():
            return job, count < len(jobs)
    return jobs[0], False


def _load_result(folder):
    path = os.path.join(folder, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_result(job, stopped=False):
    """The accuracy and `x_adv` of a finished subprocess, or its error raised (`stopped`: its siblings were
    stopped)."""
    result = _load_result(job.folder)
    siblings = "; the other subprocesses were stopped" if stopped else ""
    if result is None:
        lines = "\n".join(job.tail)
        raise RuntimeError(
            f"AutoAttack failed in {job.what} (exit code {job.proc.returncode}{siblings}). "
            f"Its output ends with:\n{lines}"
        )
    for message in result.get("warnings", []):
        warnings.warn(message, AutoAttackWarning, stacklevel=4)
    if result.get("error"):
        where = f" (in {job.what}{siblings})" if job.replica else ""
        raise _ERRORS.get(result.get("error_type"), RuntimeError)(result["error"] + where)
    adv_path = os.path.join(job.folder, "x_adv.npy")
    x_adv = np.load(adv_path) if result.get("has_adversarial") and os.path.exists(adv_path) else None
    return float(result["accuracy"]), x_adv
