"""TensorFlow implementations of the backend hooks (see `keras_rpat.backend`)."""

import contextlib

import tensorflow as tf

from keras_rpat.backend import engine
from keras_rpat.backend import tensorflow_distributed


def input_gradient(loss_fn, x):
    x = tf.stop_gradient(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        loss = loss_fn(x)
    grad = tape.gradient(loss, x)
    return tf.stop_gradient(loss), tf.stop_gradient(grad)


def no_grad():
    # Forward passes outside a GradientTape record nothing; callers also wrap
    # outputs in `stop_gradient`.
    return contextlib.nullcontext()


def assign_moving_average(targets, sources, decay):
    for t, s in zip(targets, sources):
        value = tf.cast(s.value, t.dtype)
        if (isinstance(decay, (int, float)) and decay == 0.0) or not tf.as_dtype(t.dtype).is_floating:
            t.assign(value)
        else:
            d = tf.cast(decay, t.dtype) if tf.is_tensor(decay) else decay  # a dynamic decay is a float32 tensor
            t.assign(d * t.value + (1.0 - d) * value)


class TensorFlowEngine(engine.Engine):
    """How TensorFlow runs `RPATTrainer.step` (`keras_rpat.backend.engine`): the weight gradients from a
    `GradientTape` opened after the attack and the teacher (so it records only the training forwards);
    under a tf.distribute strategy each replica takes its rows (`tensorflow_distributed.ReplicaBatch`)."""

    def shard(self, x, y, sample_weight):
        return tensorflow_distributed.replica_batch(self.trainer, x, y, sample_weight)

    def gradients(self, loss_fn, variables):
        with tf.GradientTape() as tape:
            loss, aux = loss_fn()
        return tape.gradient(loss, variables), aux


def train_engine(trainer):
    return TensorFlowEngine(trainer)


def initialize_distributed(owner=None, strategy=None):
    return tensorflow_distributed.initialize(strategy, owner)


def distributed_context(owner=None):
    return tensorflow_distributed.context(owner)


def map_rows(fn, arrays, owner=None, seed_generators=()):
    return tensorflow_distributed.map_rows(fn, arrays, owner, seed_generators)


def replica_processes(owner):
    return tensorflow_distributed.replica_processes(tensorflow_distributed.initialize(owner=owner))


def all_gather_object(value):
    return tensorflow_distributed.all_gather_object(value)


def from_primary(value):
    return tensorflow_distributed.from_primary(value)


def worker_failure(error):
    return tensorflow_distributed.worker_failure(error)


def replica_share(x):
    return tensorflow_distributed.replica_share(x)


def synchronized_moments(x, axes):
    return tensorflow_distributed.synchronized_moments(x, axes)


def place_generator(generator):
    tensorflow_distributed.place_generator(generator)


def random_uniform(shape, minval, maxval, dtype, seed):
    import keras

    return tensorflow_distributed.global_draw(
        lambda s: keras.random.uniform(s, minval=minval, maxval=maxval, dtype=dtype, seed=seed), shape
    )


def random_normal(shape, mean, stddev, dtype, seed):
    import keras

    return tensorflow_distributed.global_draw(
        lambda s: keras.random.normal(s, mean=mean, stddev=stddev, dtype=dtype, seed=seed), shape
    )


def random_beta(concentration1, concentration0, dtype, seed):
    import keras

    return keras.random.beta((), concentration1, concentration0, dtype=dtype, seed=seed)


def set_random_seed(seed):
    import keras

    keras.utils.set_random_seed(seed)


def device_name():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "cpu"
