"""Joining a data-parallel job from the CLI: `torchrun ... -m keras_rpat.cli train|recipe` on
torch, `--strategy mirrored|multiworker` (or `TF_CONFIG`) on tensorflow.

Every rank (torch process, or tf.distribute worker) runs the whole command on
the same data; the training steps are data-parallel
(`keras_rpat.backend.torch_distributed`, `keras_rpat.backend.tensorflow_distributed`),
so every rank computes the same weights, metrics and evaluations. Rank 0 (the
chief) writes into `--out` and prints; rank `r > 0` stays silent and keeps its
copy of the files in `<out>/.rank<r>` (what it resumes from after an
interruption), removed once the command has completed.
"""

import contextlib
import dataclasses
import os
import shutil

import click

from keras_rpat import _names
from keras_rpat import config as rpat_config
from keras_rpat.cli import options as opt

__all__ = ["Launch", "data_parallel_options", "join", "join_evaluation", "rank_file", "strategy_option"]

# The --strategy of the command being run (set by its callback on every invocation).
_REQUESTED = {"strategy": None}


def _remember_strategy(ctx, param, value):
    _REQUESTED["strategy"] = value
    return value


def strategy_option():
    """`--strategy` (read by `join` and `join_evaluation`)."""
    return click.option(
        "--strategy",
        type=click.Choice(_names.TF_STRATEGIES),
        default=None,
        expose_value=False,
        callback=_remember_strategy,
        help="tensorflow: run with tf.distribute. mirrored: this host's GPUs; multiworker: the hosts of "
        "TF_CONFIG (the default when TF_CONFIG is set), else of the Slurm job step (srun). On torch, launch with "
        "torchrun instead.",
    )


def data_parallel_options():
    """`--sync-batchnorm` and `--strategy` (read by `join`)."""
    sync = click.option(
        "--sync-batchnorm",
        is_flag=True,
        help="In a data-parallel job: BatchNorm statistics over the global batch (N devices x B/N = 1 device x B).",
    )
    return lambda f: sync(strategy_option()(f))


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process writes and whether it prints."""

    out: str
    rank: int = 0
    world_size: int = 1

    @property
    def primary(self):
        return self.rank == 0

    def echo(self, message=""):
        """Prints on rank 0, unless `--quiet`."""
        if self.primary:
            opt.echo()(message)

    def finish(self):
        """Called by every rank once the command has completed: when all have, rank `r > 0` removes its
        private folder (and `--out` itself when that holds nothing else: a host that does not share
        rank 0's file system). A rank that failed keeps its folder, and so do the others (the rerun's state)."""
        if self.world_size == 1:
            return
        from keras_rpat import backend as rpat_backend

        rpat_backend.all_gather_object(None)  # every rank has completed
        if self.primary or self.out is None:
            return
        shutil.rmtree(self.out, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.out))


def rank_folder(out, rank):
    """`out` for rank 0; for rank `r > 0` its private folder `<out>/.rank<r>` (see `Launch.finish`)."""
    return out if rank == 0 else os.path.join(out, f".rank{rank}")


def join(out, sync_batchnorm, config, batch_size):
    """Joins the job this command was launched in (if any); returns its `Launch`.

    `config` (JSON-able: the command's resolved arguments) must be equal on
    every rank, and the global `batch_size` must split evenly over them.
    Called when a run starts: it loads Keras and the backend.
    """
    job, tensorflow = _join_job()
    if job is None:
        if sync_batchnorm:
            how = (
                "--strategy mirrored on a host with several GPUs, or several hosts with TF_CONFIG"
                if tensorflow
                else "`torchrun --nproc_per_node=N -m keras_rpat.cli ...`"
            )
            raise click.UsageError(
                "--sync-batchnorm needs a data-parallel job, but this command runs on one device. "
                f"Launch it with {how}, or drop --sync-batchnorm."
            )
        return Launch(out)
    if batch_size % job.world_size:
        raise click.UsageError(
            f"--batch-size {batch_size} (the global batch) does not split over {job.world_size} devices. Pick a "
            f"multiple of {job.world_size}, e.g. --batch-size {max(job.world_size, batch_size - batch_size % job.world_size)}."
        )
    rpat_config.set_sync_batchnorm_default(bool(sync_batchnorm))
    _check_same_configuration({"config": config, "sync_batchnorm": sync_batchnorm})
    return Launch(rank_folder(out, job.rank), job.rank, job.world_size)


def join_evaluation(config):
    """`join` for the evaluation commands: the ranks (replicas) split every batch, whatever its
    size, and `config` must be equal on every rank. `Launch.out` is unused."""
    job, _ = _join_job()
    if job is None:
        return Launch(None)
    _check_same_configuration(config)
    return Launch(None, job.rank, job.world_size)


def rank_file(path, rank):
    """`path` for rank 0, the sibling `.<name>.rank<r>` for the others (`None` stays `None`)."""
    if path is None or rank == 0:
        return path
    parent, name = os.path.split(os.path.normpath(path))
    return os.path.join(parent, f".{name}.rank{rank}")


def _join_job():
    """Joins torchrun's job or the requested tf.distribute strategy: `(context or None, tensorflow?)`."""
    import keras

    from keras_rpat import backend as rpat_backend

    strategy = _REQUESTED["strategy"]
    tensorflow = keras.config.backend() == "tensorflow"
    if strategy is not None and not tensorflow:
        raise click.UsageError(
            f"--strategy {strategy} is tf.distribute's, for the tensorflow backend (KERAS_BACKEND=tensorflow). "
            f"On {keras.config.backend()}, launch one process per device with "
            "`torchrun --nproc_per_node=N -m keras_rpat.cli ...` and drop --strategy."
        )
    if strategy is None and tensorflow and os.environ.get("TF_CONFIG", "").strip():
        strategy = "multiworker"
    try:
        return rpat_backend.initialize_distributed(strategy=strategy), tensorflow
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _check_same_configuration(config):
    from keras_rpat import backend as rpat_backend

    try:
        rpat_backend.check_same_on_all_ranks(config, "configuration")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
