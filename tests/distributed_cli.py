"""`python -m keras_rpat.cli ...` as one rank under torchrun (or one tf.distribute worker), where rank 1
can be killed mid-training.

    torchrun --nproc_per_node=2 tests/distributed_cli.py [--kill-rank-1-at STEP RANK0_METADATA] recipe ...
    TF_CONFIG=... KERAS_BACKEND=tensorflow python tests/distributed_cli.py [--kill-rank-1-at ...] recipe ...

Rank 1 is torchrun's `RANK=1`, or the worker of task index 1 in `TF_CONFIG`.

With `--kill-rank-1-at`, rank 1 SIGKILLs itself after it has backed up step
STEP of training, once rank 0's backup (RANK0_METADATA, its
`training_metadata.json`) holds that step too: both ranks then keep the same
last checkpoint, as after a kill between two backups. Without it, this is the
plain command line.
"""

import json
import os
import signal
import sys
import time

from keras_rpat import callbacks
from keras_rpat.cli import main


def _backed_up(path, step):
    try:
        with open(path) as f:
            return json.load(f).get("batch", 0) >= step
    except (OSError, ValueError):
        return False


def kill_rank_1_at(step, rank0_metadata):
    save = callbacks.RunBackup.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        save(self, batch, logs)
        if self.batch_offset + batch + 1 == step:
            deadline = time.time() + 120
            while not _backed_up(rank0_metadata, step) and time.time() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

    callbacks.RunBackup.on_train_batch_end = on_train_batch_end


def _rank():
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    return int(task.get("index", 0))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--kill-rank-1-at"]:
        if _rank() == 1:
            kill_rank_1_at(int(args[1]), args[2])
        args = args[3:]
    sys.exit(main(args, prog_name="keras-rpat"))
