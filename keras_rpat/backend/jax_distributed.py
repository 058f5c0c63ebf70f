"""Data parallelism on JAX: `keras.distribution`.

A `keras.distribution.DataParallel` (set with `keras.distribution.set_distribution`
before the models are made) shards each batch over a mesh of devices and replicates
the variables; the jitted train step then computes on the global batch, so N devices
take the one-device step: BatchNorm statistics and random starts are the global
batch's.
"""

import keras

from keras_rpat.backend import Context
from keras_rpat.backend import DistributedError


def _distribution():
    return keras.distribution.distribution()


def initialize(strategy=None):
    """The context of the `keras.distribution` in force, or `None` without one."""
    if strategy is not None:
        raise DistributedError(
            f"strategy={strategy!r} names a tf.distribute strategy, which runs on the tensorflow backend only. "
            "On jax, set a keras.distribution (e.g. keras.distribution.set_distribution("
            "keras.distribution.DataParallel())) before making the models."
        )
    return context()


def context():
    distribution = _distribution()
    if distribution is None:
        return None
    import jax

    return Context(
        rank=jax.process_index(),
        world_size=int(distribution.device_mesh.devices.size),
        local_rank=0,
        backend="keras.distribution",
    )


def all_gather_object(value):
    import jax

    if jax.process_count() == 1:
        return None
    raise DistributedError("Multi-process keras.distribution jobs are not supported yet.")


def from_primary(value):
    import jax

    if jax.process_count() == 1:
        return value
    raise DistributedError("Multi-process keras.distribution jobs are not supported yet.")
