"""`python -m keras_rpat.cli ...` as one rank under torchrun (or one tf.distribute worker), where rank 1
can be killed mid-training.

    torchrun --nproc_per_node=2 tests/distributed_cli.py [--float64] [--kill-rank-1-at STEP RANK0_METADATA] recipe ...
    torchrun --nproc_per_node=2 tests/distributed_cli.py [--float64] eval ... +++ autoattack ...   # one, then the next
    TF_CONFIG=... KERAS_BACKEND=tensorflow python tests/distributed_cli.py [--float64] [--kill-rank-1-at ...] recipe ...

Rank 1 is torchrun's `RANK=1`, or the worker of task index 1 in `TF_CONFIG`.

With `--kill-rank-1-at`, rank 1 SIGKILLs itself after it has backed up step
STEP of training, once rank 0's backup (RANK0_METADATA, its
`training_metadata.json`) holds that step too: both ranks then keep the same
last checkpoint, as after a kill between two backups. With
`--kill-rank-1-before-backup-at` rank 1 dies just before it writes the
metadata of its backup of STEP: the ranks' backups are then one step apart. Without either, this is the plain
command line. `--float64` runs it under `testing.float64_precision()` (the model built in float64), so that the
ranks' files can be compared with one process' to float64 rounding (PGD's float32 chain is chaotic).
"""

import json
import os
import signal
import sys
import time

from testing import float64_precision

from keras_rpat import _io, callbacks
from keras_rpat.cli import main


def _backed_up(path, step):
    try:
        with open(path) as f:
            return json.load(f).get("batch", 0) >= step
    except (OSError, ValueError):
        return False


def _die_once_rank_0_has(step, rank0_metadata):
    deadline = time.time() + 120
    while not _backed_up(rank0_metadata, step) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_rank_1_at(step, rank0_metadata):
    save = callbacks.RunBackup.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        save(self, batch, logs)
        if self.batch_offset + batch + 1 == step:
            _die_once_rank_0_has(step, rank0_metadata)

    callbacks.RunBackup.on_train_batch_end = on_train_batch_end


def kill_rank_1_before_backup_at(step, rank0_metadata):
    # At the last moment: the backup's collectives (tf.distribute reads the metric states with one) are done.
    write = _io.atomic_write_json

    def atomic_write_json(path, obj, *args, **kwargs):
        if os.path.basename(path) == "training_metadata.json" and obj.get("batch") == step:
            _die_once_rank_0_has(step, rank0_metadata)
        return write(path, obj, *args, **kwargs)

    _io.atomic_write_json = atomic_write_json


def _rank():
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    return int(task.get("index", 0))


def run(args):
    kills = {"--kill-rank-1-at": kill_rank_1_at, "--kill-rank-1-before-backup-at": kill_rank_1_before_backup_at}
    if args[:1] and args[0] in kills:
        if _rank() == 1:
            kills[args[0]](int(args[1]), args[2])
        args = args[3:]
    while "+++" in args:
        first = args.index("+++")
        code = main(args[:first], prog_name="keras-rpat", standalone_mode=False)
        if code:
            return code
        args = args[first + 1 :]
    return main(args, prog_name="keras-rpat")  # exits, as the command line does


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--float64"]:
        with float64_precision():
            sys.exit(run(args[1:]))
    sys.exit(run(args))
