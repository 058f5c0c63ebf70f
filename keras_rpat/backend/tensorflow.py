"""TensorFlow implementations of the backend hooks (see `keras_rpat.backend`)."""

import contextlib

import tensorflow as tf

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
            t.assign(decay * t.value + (1.0 - decay) * value)


def train_step(trainer, data):
    logs = tensorflow_distributed.train_step(trainer, data)  # several replicas: their rows of the batch
    if logs is not None:
        return logs
    x, y, sample_weight = trainer._unpack(data)
    # The attack and the teacher run before the tape opens, so the tape records
    # only the training forward passes.
    x_adv, static_views = trainer._pre_gradient_views(x, y)
    trainable_weights = trainer.trainable_weights
    with tf.GradientTape() as tape:
        total, terms, views = trainer._gradient_views_and_losses(x, y, x_adv, static_views, sample_weight)
        scaled = trainer.optimizer.scale_loss(total)
    gradients = tape.gradient(scaled, trainable_weights)
    trainer.optimizer.apply(gradients, trainable_weights)
    trainer._after_update(x)
    return trainer._update_metrics(y, total, terms, views, sample_weight)


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


def device_name():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "cpu"
