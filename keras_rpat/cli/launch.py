"""Joining a data-parallel job from the CLI: `torchrun ... -m keras_rpat.cli train|recipe` on
torch, `--strategy mirrored|multiworker` (or `TF_CONFIG`) on tensorflow, `--distribution
data_parallel` (or the `KERAS_DISTRIBUTION_*` variables of several processes) on jax.

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

# The --strategy and --distribution of the command being run (set by their callbacks on every invocation).
_REQUESTED = {"strategy": None, "distribution": None}


def _remember(ctx, param, value):
    _REQUESTED[param.name] = value
    return value


def _requested(flag, choices, help_text):
    """An option naming how to distribute the command, kept in `_REQUESTED` for `join` (not passed on)."""
    return click.option(
        flag, type=click.Choice(choices), default=None, expose_value=False, callback=_remember, help=help_text
    )


def strategy_option():
    """`--strategy` (tensorflow) and `--distribution` (jax), read by `join` and `join_evaluation`."""
    strategy = _requested(
        "--strategy",
        _names.TF_STRATEGIES,
        "tensorflow: run with tf.distribute. mirrored: this host's GPUs; multiworker: the hosts of "
        "TF_CONFIG (the default when TF_CONFIG is set), else of the Slurm job step (srun). On torch, launch with "
        "torchrun instead.",
    )
    distribution = _requested(
        "--distribution",
        _names.JAX_DISTRIBUTIONS,
        "jax: run with keras.distribution. data_parallel: the batch split over every local device (and "
        "the processes of KERAS_DISTRIBUTION_*, the default when they name several); BatchNorm statistics are "
        "the global batch's.",
    )
    return lambda f: strategy(distribution(f))


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
    job, backend = _join_job()
    if job is None:
        if sync_batchnorm:
            how = {
                "tensorflow": "--strategy mirrored on a host with several GPUs, or several hosts with TF_CONFIG",
                "jax": "--distribution data_parallel on a host with several devices",
            }.get(backend, "`torchrun --nproc_per_node=N -m keras_rpat.cli ...`")
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
    if backend == "jax":
        _check_one_process_feeds_jax(job)
        sync_batchnorm = True  # a keras.distribution step on jax normalises over the global batch
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


_HOW = {
    "torch": "launch one process per device with `torchrun --nproc_per_node=N -m keras_rpat.cli ...`",
    "tensorflow": "use --strategy mirrored (this host's devices) or multiworker (TF_CONFIG)",
    "jax": "use --distribution data_parallel (every local device)",
}


def _join_job():
    """Joins torchrun's job, the requested tf.distribute strategy or keras.distribution (jax):
    `(context or None, the Keras backend's name)`."""
    import keras

    from keras_rpat import backend as rpat_backend

    backend = keras.config.backend()
    strategy, distribution = _REQUESTED["strategy"], _REQUESTED["distribution"]
    for option, value, owner in (("--strategy", strategy, "tensorflow"), ("--distribution", distribution, "jax")):
        if value is not None and backend != owner:
            what = "tf.distribute's" if owner == "tensorflow" else "keras.distribution's"
            raise click.UsageError(
                f"{option} {value} is {what}, for the {owner} backend (KERAS_BACKEND={owner}). "
                f"On {backend}, {_HOW.get(backend, _HOW['torch'])} and drop {option}."
            )
    if strategy is None and backend == "tensorflow" and os.environ.get("TF_CONFIG", "").strip():
        strategy = "multiworker"
    try:
        if backend == "jax":
            strategy = distribution  # or the one the KERAS_DISTRIBUTION_* variables of several processes imply
        return rpat_backend.initialize_distributed(strategy=strategy), backend
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _check_one_process_feeds_jax(job):
    """Training from the CLI feeds every process the whole dataset; Keras on jax wants each process's share."""
    from keras_rpat import backend as rpat_backend

    processes = rpat_backend.process_count()
    if processes > 1:
        raise click.UsageError(
            f"Training with {processes} jax processes is not supported by the CLI yet (Keras feeds "
            "each process its share of every batch; the recipes give every process the whole dataset). "
            "Train with one process per job (--distribution data_parallel uses all of its local devices); "
            "`keras-rpat eval` runs over several processes."
        )


def _check_same_configuration(config):
    from keras_rpat import backend as rpat_backend

    try:
        rpat_backend.check_same_on_all_ranks(config, "configuration")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
