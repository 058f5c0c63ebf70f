"""TensorFlow implementations of the backend hooks (see `keras_rpat.backend`)."""

import contextlib

import tensorflow as tf


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
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        # The hand-written loss terms would be summed over replicas unscaled, and
        # every replica would draw the same random starts: refuse rather than train wrong.
        raise NotImplementedError(
            f"RPATTrainer does not support tf.distribute yet (a strategy with {replicas} replicas is active). "
            "Train data-parallel on the torch backend (KERAS_BACKEND=torch, `torchrun --nproc_per_node=N ...`), "
            "or build and fit the trainer outside the strategy's scope."
        )
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


def initialize_distributed():
    # tf.distribute strategies are not wired in yet: one replica.
    return None


def distributed_context():
    return None


def evaluation_rows(size):
    return contextlib.nullcontext()


def gather_rows(values, rows, size):
    return values


def check_same_on_all_ranks(value, what, *fix):
    return None


def from_primary(value):
    return value


def share_folder(folder):
    return None


def synchronized_moments(x, axes):
    return None


def lowered_models(trainer):
    # tf.function already traces the step into one graph: no lowering.
    return None


def inference_model(model, enabled=True):
    return model


def random_uniform(shape, minval, maxval, dtype, seed):
    import keras

    return keras.random.uniform(shape, minval=minval, maxval=maxval, dtype=dtype, seed=seed)


def random_normal(shape, mean, stddev, dtype, seed):
    import keras

    return keras.random.normal(shape, mean=mean, stddev=stddev, dtype=dtype, seed=seed)


def random_beta(concentration1, concentration0, dtype, seed):
    import keras

    return keras.random.beta((), concentration1, concentration0, dtype=dtype, seed=seed)


def device_name():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "cpu"
