"""Backend dispatch: the only place that knows which Keras backend is active.

`keras.ops` has no gradient operator, so each supported backend provides, in its
own module, the input gradient used by the attacks, a no-gradient context and the
engine of `RPATTrainer.step` (`engine.Engine`: how weight gradients are taken and
reduced). Everything else in keras_rpat uses `keras.ops`.
"""

import dataclasses
import importlib
import json

import keras

from keras_rpat import _io

SUPPORTED_BACKENDS = ("torch", "tensorflow", "jax")
# The environment `torchrun` gives each process of a job (read by `torch_distributed.initialize`).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(ValueError):
    """A data-parallel job that cannot run as configured (the message says how to fix it).

    Raised by the backends' data-parallel modules (torchrun, tf.distribute, keras.distribution).
    """


@dataclasses.dataclass(frozen=True)
class Context:
    """A data-parallel job, as `initialize_distributed` returns it.

    Attributes:
        rank: this process's rank (torchrun), worker index (tf.distribute; 0 is the chief) or
            `jax.process_index()` (jax).
        world_size: the ranks, the replicas in sync, or the devices on the mesh's batch axis (jax).
        local_rank: the rank on this host (torchrun's `LOCAL_RANK`; 0 on tensorflow and jax).
        backend: `"gloo"` / `"nccl"` on torch, `"mirrored"` / `"multiworker"` on tensorflow,
            `"keras.distribution"` on jax.
        strategy: the `tf.distribute` strategy (tensorflow), else `None`.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    strategy: object = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def is_primary(self):
        return self.rank == 0


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
            "KERAS_BACKEND=torch (the default for keras_rpat), tensorflow or jax "
            "before importing keras or keras_rpat."
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


def loop(num_steps, body, carry):
    """`carry = body(carry)` `num_steps` times (a Python int): a Python loop, or on JAX one
    `jax.lax.fori_loop` (compiled once) that carries the variables `body` reads and assigns."""
    run = getattr(get_backend(), "loop", None)
    if run is not None:
        return run(num_steps, body, carry)
    for _ in range(num_steps):
        carry = body(carry)
    return carry


def train_engine(trainer):
    """A new `keras_rpat.backend.engine.Engine` for `trainer` on the active backend: what
    `RPATTrainer.step` needs of it (gradients, forward and update contexts, data-parallel reductions)."""
    return get_backend().train_engine(trainer)


def initialize_distributed(owner=None, strategy=None):
    """Joins the data-parallel job this process runs in: `torchrun`'s on torch; on
    tensorflow the strategy `owner` (a model) was built under, the current one, or
    a new one named by `strategy` (`"mirrored"`, `"multiworker"`; the CLI's `--strategy`);
    on jax the `keras.distribution` in force, or a new one named by `strategy`
    (`"data_parallel"`: the CLI's `--distribution`), and `owner` (a trainer) must have `sync_batchnorm=True`.

    Returns its context (`rank`, `world_size`: ranks or replicas, `local_rank`,
    `backend`, `is_primary`), or `None` for a process that runs alone.
    """
    return get_backend().initialize_distributed(owner, strategy)


def distributed_context(owner=None):
    """The data-parallel job's context once joined (on tensorflow also the strategy `owner`, a model,
    was built under), else `None`. Joins nothing."""
    return get_backend().distributed_context(owner)


def replica_processes(owner=None):
    """On tensorflow, in a tf.distribute job of several replicas: how a process per local replica joins
    one `torch.distributed` job (`tensorflow_distributed.ReplicaProcesses`: the replicas' global ranks,
    GPUs and the rendezvous), for work done in PyTorch subprocesses (AutoAttack). `None` for one
    replica, and on torch (each rank is already a process). Collective under MultiWorkerMirroredStrategy.
    """
    get = getattr(get_backend(), "replica_processes", None)
    return None if get is None else get(owner)


def map_rows(fn, arrays, owner=None, seed_generators=()):
    """`fn(*tensors)` on one evaluation batch of `arrays` (NumPy arrays of equal length): a tuple of
    per-row tensors, returned as NumPy arrays.

    In a data-parallel job each rank (torchrun) or replica (tf.distribute: the current strategy,
    else `owner`'s, a model built in a strategy's scope) computes its rows and every one returns
    all of them, the one-process values: random draws inside, from `seed_generators` (the
    `keras.random.SeedGenerator`s `fn` draws from), are the one-process rows.
    """
    return get_backend().map_rows(fn, arrays, owner, seed_generators)


_SAME_COMMAND = (
    "Launch every rank with the same command line and files (torchrun, or each tf.distribute worker, runs one "
    "command per host: check the other hosts' copies)."
)


def check_same_on_all_ranks(value, what, fix=_SAME_COMMAND):
    """Raises `DistributedError` (naming `what`, the differences and `fix`) unless every rank
    (process) of the job passes an equal JSON-able `value`; nothing for a process that runs alone."""
    mine = json.loads(json.dumps(value, sort_keys=True, default=str))
    gathered = all_gather_object(mine)
    if gathered is None:
        return
    differ = [r for r, other in enumerate(gathered) if other != gathered[0]]
    if differ:
        first = _flat(gathered[0])
        lines = []
        for r in differ:
            other = _flat(gathered[r])
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            lines += [f"{k or what} is {other.get(k)!r} on rank {r}, {first.get(k)!r} on rank 0" for k in keys[:5]]
        raise DistributedError(f"Ranks {differ} have a different {what} than rank 0: {'; '.join(lines)}. {fix}")


def _flat(value, prefix=""):
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def process_count():
    """The processes of the data-parallel job on jax (a process drives all of its host's devices);
    elsewhere 1 (torchrun and tf.distribute: see `distributed_context`)."""
    count = getattr(get_backend(), "process_count", None)
    return 1 if count is None else count()


def all_gather_object(value):
    """Every rank's (process') `value` (picklable), in rank order; `None` for a process alone
    (MirroredStrategy's replicas are one process)."""
    return get_backend().all_gather_object(value)


def from_primary(value):
    """Rank 0's `value` (any picklable object) on every rank (process) of the job, so that all
    take rank 0's decision (e.g. what a resumed run still has to do); `value` for a process alone."""
    return get_backend().from_primary(value)


def share_folder(folder):
    """Makes `folder` (its files, not subfolders) on every rank of the job a copy of rank 0's;
    nothing for a process alone."""
    job = distributed_context()
    if job is None:
        return
    files = from_primary(_io.read_folder(folder) if job.is_primary else None)
    if not job.is_primary:
        _io.replace_folder(folder, files)


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


def place_generator(generator):
    """Gives a `keras.random.SeedGenerator` made outside the open tf.distribute strategy scope a
    state made in it (mirrored, so that a replicated step advances it once, as on one device),
    keeping its value; nothing on torch or outside a strategy's scope."""
    place = getattr(get_backend(), "place_generator", None)
    if place is not None:
        place(generator)


def set_random_seed(seed):
    """Seeds every random stream keras_rpat draws from (Python's `random`, from which a
    `keras.random.SeedGenerator(None)` takes its seed, NumPy and the backend), as
    `keras.utils.set_random_seed` does.

    On torch it leaves TensorFlow alone unless it is imported already: Keras seeds (and
    so imports) TensorFlow whenever it is installed, for `tf.data` pipelines, which
    keras_rpat's torch runs do not use; the import costs about 400 MB and, measured on
    a CPU, a slower torch step (docs/guides/performance.md). Keras' own global
    `SeedGenerator` (`keras.random` ops called with `seed=None`, which keras_rpat never
    makes) is reset only where `keras.utils.set_random_seed` runs.
    """
    get_backend().set_random_seed(int(seed))


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


if keras.config.backend() == "jax":
    get_backend()  # before JAX compiles anything: keras_rpat.backend.jax sets XLA's CPU flags
