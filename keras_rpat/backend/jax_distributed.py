"""Data parallelism on JAX: `keras.distribution`.

A `keras.distribution.DataParallel` (set with `keras.distribution.set_distribution`,
or a `distribution.scope()`, before the models are made) shards each batch over
a mesh of devices and replicates the variables. The jitted train step computes
on the global batch as one (sharded) array, so N devices take the one-device
step: BatchNorm statistics are the global batch's (what `sync_batchnorm=True`
asks of the other engines; per-device statistics are not offered, so
`sync_batchnorm=False` is refused under a distribution) and random starts are
the one-device draw.

Several processes (hosts) join one job with `keras.distribution.initialize`
(`jax.distributed.initialize`), from the `KERAS_DISTRIBUTION_*` environment
variables (`initialize(strategy="data_parallel")`, the CLI's `--distribution`).
Keras then feeds each process's share of every global batch to the step
(`jax.make_array_from_process_local_data`): `fit` must be given this process's
rows of each batch (the `DataParallel` made here has `auto_shard_dataset=False`;
Keras' default shards a `tf.data.Dataset` over the processes, and takes no other data). The objects the processes agree on (`all_gather_object`,
`from_primary`) travel as pickled bytes through `jax.experimental.multihost_utils`.
"""

import os
import pickle

import jax
import keras
import numpy as np
from jax.experimental import multihost_utils

from keras_rpat import _names
from keras_rpat.backend import Context
from keras_rpat.backend import DistributedError

# What `keras.distribution.initialize` reads: a job of several processes.
PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def initialize(strategy=None, owner=None):
    """The `Context` of the `keras.distribution` in force (`None` without one, or for one device).

    `strategy="data_parallel"` (the CLI's `--distribution`) first sets a `DataParallel` over every
    device of the job, joining the processes the `KERAS_DISTRIBUTION_*` variables describe (which
    imply it). With
    `owner` (a trainer), checks that its `sync_batchnorm` is what the jitted step does.
    """
    if strategy is None and requested_processes() > 1:
        strategy = "data_parallel"  # the environment names a job of several processes
    if strategy is not None:
        if strategy not in _names.JAX_DISTRIBUTIONS:
            raise DistributedError(
                f"Unknown distribution {strategy!r} for the jax backend. Expected one of {_names.JAX_DISTRIBUTIONS} "
                "(tf.distribute strategies run on the tensorflow backend)."
            )
        if keras.distribution.distribution() is None:
            _join_processes()
            # Several processes: each feeds its share of every batch (Keras shards only a tf.data.Dataset itself).
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(auto_shard_dataset=jax.process_count() == 1)
            )
    found = context()
    if found is not None and getattr(owner, "sync_batchnorm", True) is False:
        raise DistributedError(
            f"sync_batchnorm=False asks each device to normalise with its own rows, but on jax a keras.distribution "
            f"step computes on the global batch ({found.world_size} devices): BatchNorm statistics are always the "
            "global batch's. Build the trainer with sync_batchnorm=True (the CLI implies --sync-batchnorm on jax)."
        )
    return found


def requested_processes():
    """The processes `KERAS_DISTRIBUTION_NUM_PROCESSES` names (1 when unset)."""
    raw = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise DistributedError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES must be a positive number of processes. "
            f"Received: KERAS_DISTRIBUTION_NUM_PROCESSES={raw!r}."
        )
    return int(raw)


def _join_processes():
    """`keras.distribution.initialize()` when the environment names a job of several processes."""
    if requested_processes() <= 1 or jax.distributed.is_initialized():
        return
    missing = [name for name in PROCESS_VARIABLES if not os.environ.get(name, "").strip()]
    if missing:
        raise DistributedError(
            f"A multi-process jax job needs {', '.join(PROCESS_VARIABLES)}; {', '.join(missing)} unset. Example "
            "for process 0 of 2: KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:1234 KERAS_DISTRIBUTION_NUM_PROCESSES=2 "
            "KERAS_DISTRIBUTION_PROCESS_ID=0 (1 on the other host)."
        )
    keras.distribution.initialize()


def context():
    """The `Context` of the `keras.distribution` in force: `rank` is `jax.process_index()`,
    `world_size` the devices along the batch axis of its mesh; `None` without one, or for one device."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    mesh = distribution.device_mesh
    replicas = int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])
    if replicas <= 1:
        return None
    return Context(rank=jax.process_index(), world_size=replicas, local_rank=0, backend="keras.distribution")


def map_rows(fn, arrays):
    """`fn(*tensors)` on the rows `arrays` (NumPy, the same in every process): under a distribution
    the rows are sharded over the batch axis of its mesh (when they split evenly; else computed whole
    on every device), and every process gets every row of the outputs."""
    distribution = keras.distribution.distribution()
    if context() is None or len(arrays[0]) % context().world_size:
        return tuple(keras.ops.convert_to_numpy(o) for o in fn(*map(keras.ops.convert_to_tensor, arrays)))

    def sharded(array):
        sharding = distribution.get_data_layout(array.shape).backend_layout
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    outputs = fn(*(sharded(np.asarray(a)) for a in arrays))
    if jax.process_count() == 1:
        return tuple(np.asarray(o) for o in outputs)
    return tuple(np.asarray(multihost_utils.process_allgather(o, tiled=True)) for o in outputs)


def all_gather_object(value):
    """Every process's `value` (picklable), in process order; `None` for one process."""

    if jax.process_count() == 1:
        return None
    data = np.frombuffer(pickle.dumps(value), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([len(data)], np.int64)).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(gathered[p, :n].tobytes()) for p, n in enumerate(lengths)]


def from_primary(value):
    """Process 0's `value` (picklable) on every process; `value` itself for one process."""

    if jax.process_count() == 1:
        return value
    data = np.frombuffer(pickle.dumps(value), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int64)))
    padded = np.zeros(length, np.uint8)
    padded[: len(data)] = data
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(padded)).tobytes())


def process_count():
    """The processes of the job (`jax.process_count()`)."""
    return jax.process_count()
