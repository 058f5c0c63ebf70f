"""Backend dispatch: the only place that knows which Keras backend is active.

`keras.ops` has no gradient operator, so each supported backend provides, in its
own module, the input gradient used by the attacks, a no-gradient context and the
body of `RPATTrainer.train_step`. Everything else in keras_rpat uses `keras.ops`.
"""

import importlib

import keras

SUPPORTED_BACKENDS = ("torch", "tensorflow")


class DistributedError(ValueError):
    """A data-parallel job that cannot run as configured (the message says how to fix it).

    Raised by both backends' data-parallel modules (torchrun, tf.distribute).
    """


def get_backend():
    """Returns the backend module for the active Keras backend.

    Raises:
        RuntimeError: if Keras runs on a backend keras_rpat does not support.
    """
    name = keras.config.backend()
    if name not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"keras_rpat supports the Keras backends {SUPPORTED_BACKENDS}; the "
            f"active backend is {name!r}. Set the environment variable "
            "KERAS_BACKEND=torch (the default for keras_rpat) or "
            "KERAS_BACKEND=tensorflow before importing keras or keras_rpat."
        )
    return importlib.import_module(f"keras_rpat.backend.{name}")


def input_gradient(loss_fn, x):
    """Returns `(loss, d loss / d x)` for a scalar-valued `loss_fn(x)`.

    Only the gradient with respect to `x` is computed: model weights receive no
    gradient and no parameter `.grad` is touched.
    """
    return get_backend().input_gradient(loss_fn, x)


def no_grad():
    """A context in which forward passes record no gradient."""
    return get_backend().no_grad()


def train_step(trainer, data):
    """Runs `RPATTrainer.train_step` with the backend's autodiff."""
    return get_backend().train_step(trainer, data)


def initialize_distributed(owner=None, strategy=None):
    """Joins the data-parallel job this process runs in: `torchrun`'s on torch; on
    tensorflow the strategy `owner` (a model) was built under, the current one, or
    a new one named by `strategy` (`"mirrored"`, `"multiworker"`; the CLI's `--strategy`).

    Returns its context (`rank`, `world_size`: ranks or replicas, `local_rank`,
    `backend`, `is_primary`), or `None` for a process that runs alone.
    """
    return get_backend().initialize_distributed(owner, strategy)


def distributed_context():
    """The data-parallel job's context once joined, else `None`."""
    return get_backend().distributed_context()


def evaluation_rows(size):
    """A context giving this rank's rows of an evaluation batch of `size` rows
    (`None` for a process that runs alone); random draws inside it are the
    one-process ones."""
    return get_backend().evaluation_rows(size)


def gather_rows(values, rows, size):
    """Every rank's per-row `values` of an `evaluation_rows` batch, as one array."""
    return get_backend().gather_rows(values, rows, size)


def check_same_on_all_ranks(value, what, *fix):
    """Raises `ValueError` unless every rank of the job passes an equal JSON-able `value`
    (the message names `what` and, if given, `fix`); nothing for a process that runs alone."""
    return get_backend().check_same_on_all_ranks(value, what, *fix)


def from_primary(value):
    """Rank 0's `value` (any picklable object) on every rank of the job, so that all take
    rank 0's decision (e.g. what a resumed run still has to do); `value` for a process alone."""
    return get_backend().from_primary(value)


def share_folder(folder):
    """Makes `folder` (its files) on every rank of the job a copy of rank 0's; nothing for a process alone."""
    return get_backend().share_folder(folder)


def worker_failure(error):
    """The `DistributedError` (what happened, and "re-run the same command on every worker") for
    `error` when it is how the engine reports that another process of the job died; else `None`."""
    return get_backend().worker_failure(error)


def replica_share(x):
    """A context for a step on the batch `x` of one tf.distribute replica: yields the
    replica's share of the global batch (`rows / batch`), and random draws inside
    are its rows of the one-device draw. Yields `1.0` elsewhere."""
    return get_backend().replica_share(x)


def synchronized_moments(x, axes):
    """`(mean, variance, count)` of `x` over `axes` and the global batch, inside a
    data-parallel step with synchronized BatchNorm; `None` otherwise."""
    return get_backend().synchronized_moments(x, axes)


def lowered_models(trainer):
    """The trainer's fast-path models (`classifier`, `features(proxies)`,
    `teacher`), or `None` where the trainer runs its Keras models."""
    return get_backend().lowered_models(trainer)


def inference_model(model, enabled=True):
    """`model` as the evaluation runs it: on torch lowered into torch kernels
    (exact; `enabled=False` or a model that cannot be lowered returns it)."""
    return get_backend().inference_model(model, enabled)


def assign_moving_average(targets, sources, decay):
    """`t <- decay * t + (1 - decay) * s` for each pair, in place."""
    return get_backend().assign_moving_average(targets, sources, decay)


def random_uniform(shape, minval=0.0, maxval=1.0, dtype="float32", seed=None):
    """Uniform random numbers drawn on the device, without host synchronisation.

    `seed` is a `keras.random.SeedGenerator`. On torch the numbers come from a
    device-side `torch.Generator` seeded once from it (Keras' own torch random
    ops re-seed from a host integer on every call, a device-to-host sync that
    also breaks CUDA-graph capture).
    """
    return get_backend().random_uniform(shape, minval, maxval, dtype, seed)


def random_normal(shape, mean=0.0, stddev=1.0, dtype="float32", seed=None):
    """Gaussian random numbers drawn on the device (see `random_uniform`)."""
    return get_backend().random_normal(shape, mean, stddev, dtype, seed)


def random_beta(concentration1, concentration0, dtype="float32", seed=None):
    """One Beta(c1, c0) sample as a scalar tensor (see `random_uniform`)."""
    return get_backend().random_beta(concentration1, concentration0, dtype, seed)


def device_name():
    """A short description of the device Keras computes on (`"cpu"`, `"cuda:0"`...)."""
    return get_backend().device_name()


def get_generator_state(generator):
    """The JSON-able state of a `keras.random.SeedGenerator`: its variable and, on torch,
    the device generators behind it (`"backend"`), for resuming runs and evaluations."""
    state = {"variable": keras.ops.convert_to_numpy(generator.state.value).tolist()}
    get = getattr(get_backend(), "get_random_state", None)
    if get is not None:
        state["backend"] = get(generator)
    return state


def set_generator_state(generator, state):
    """Restores what `get_generator_state` returned."""
    if "variable" in state:
        generator.state.assign(keras.ops.convert_to_tensor(state["variable"], dtype=generator.state.dtype))
    put = getattr(get_backend(), "set_random_state", None)
    if put is not None and "backend" in state:
        put(generator, state["backend"])


if keras.config.backend() == "torch":
    # Loaded with the package: keeps Keras from importing TensorFlow on torch.
    from keras_rpat.backend import torch_without_tensorflow  # noqa: E402, F401
