"""Data-parallel training under `tf.distribute` (`MirroredStrategy`, `MultiWorkerMirroredStrategy`).

Keras 3 already runs `train_step` once per replica inside `strategy.run` and
sums the gradients over the replicas in the optimiser. What it leaves to the
step (and what this module adds) is what makes N replicas x B/N take the step
of one device x B, the same rules as `torch_distributed`:

- Keras hands every replica a contiguous block of the global batch, in
  replica order: its rows. Two-view batches are reassembled and re-split,
  one part of each half per replica, so that pairs stay pairs.
- Each replica's loss is its mean over its rows weighted by `rows / batch`, so
  the optimiser's sum over replicas is the one-device batch mean (Keras' own
  `scale_loss_for_distribution` divides by the replica count; ours are
  hand-written `ops.mean`s).
- Random starts: a per-sample draw is made for the global batch from the
  shared seed state and each replica keeps its rows (replicas draw different
  starts, reproducible per seed, and the run does not depend on N).
- With `sync_batchnorm`, BatchNorm's batch mean and variance are taken over the
  global batch (two passes, differentiable all-reduces in replica context).
  Without it each replica normalises with its own rows, and the float
  non-trainable variables (moving statistics, the WA teacher) are averaged
  over the replicas after every step: Keras' variables have no aggregation, so
  each replica would otherwise keep its own.
- The step's metric sums are all-reduced before the trackers see them, so every
  replica logs the one-device numbers.

`MirroredStrategy` runs its replicas in threads: the shard is thread-local.
"""

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import re
import socket
import threading
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_rpat import _names
from keras_rpat.backend import Context
from keras_rpat.backend import DistributedError
from keras_rpat.backend.engine import Batch

_STATE = {"context": None}
SLURM_PORT = 12345  # the first worker port on each node of a Slurm job (`SlurmClusterResolver(port_base=...)`)
_LOCAL = threading.local()


# ---------------------------------------------------------------------------- the strategy
def tf_config():
    """The parsed `TF_CONFIG` (`{}` when unset); a `DistributedError` naming the fix when malformed."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DistributedError(f"TF_CONFIG is not JSON ({e}). Received: TF_CONFIG={raw!r}. {_TF_CONFIG_EXAMPLE}")
    cluster, task = config.get("cluster", {}), config.get("task", {})
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not workers or not isinstance(task, dict) or task.get("type") not in cluster or "index" not in task:
        raise DistributedError(
            f"TF_CONFIG needs a cluster with workers and this process's task (type and index). "
            f"Received: TF_CONFIG={raw!r}. {_TF_CONFIG_EXAMPLE}"
        )
    return config


_TF_CONFIG_EXAMPLE = (
    'Example for worker 0 of two: TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\' (index 1 on the other host).'
)


def slurm_step():
    """Whether this process is a task of a Slurm job step of several tasks (`srun`)."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ


def slurm_tf_config(port=SLURM_PORT):
    """The `TF_CONFIG` of this Slurm task: one worker per task (task `SLURM_PROCID`), on `port`
    (`port + i` for the `i`-th task of a node), as `SlurmClusterResolver` lays them out.

    The resolver only names the hosts here: its GPU allocation is left out (one task per
    node sees the node's GPUs; several tasks per node get theirs from Slurm's `--gpus-per-task`).
    """
    try:
        tasks = max(int(n.split("(")[0]) for n in os.environ["SLURM_STEP_TASKS_PER_NODE"].split(","))
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False
        )
        workers = resolver.cluster_spec().as_dict()["worker"]
    except (KeyError, ValueError, RuntimeError) as e:
        raise DistributedError(
            f"Could not read the Slurm job step for --strategy multiworker ({type(e).__name__}: {e}). Run the "
            f"command under srun (one task per node), or set TF_CONFIG yourself. {_TF_CONFIG_EXAMPLE}"
        ) from None
    index = int(os.environ["SLURM_PROCID"])
    host, node = workers[index].rsplit(":", 1)[0], os.environ.get("SLURMD_NODENAME", workers[index].rsplit(":", 1)[0])
    if host != node:  # the resolver packs tasks on sorted host names: Slurm's block distribution
        raise DistributedError(
            f"Slurm task {index} runs on {node}, but the worker layout puts it on {host} (tasks are taken "
            "block by block over the sorted node names). Launch with `srun --distribution=block`, or set "
            f"TF_CONFIG yourself. {_TF_CONFIG_EXAMPLE}"
        )
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def make_strategy(name):
    """A new strategy: `"mirrored"` (this host's GPUs, else its logical CPU devices) or
    `"multiworker"` (the cluster `TF_CONFIG` describes)."""
    if name not in _names.TF_STRATEGIES:
        raise DistributedError(f"Unknown strategy {name!r}. Expected one of {_names.TF_STRATEGIES}.")
    if name == "multiworker":
        if not tf_config():
            if not slurm_step():
                raise DistributedError(
                    "--strategy multiworker needs TF_CONFIG (the cluster and this worker's task) in the environment, "
                    f"or a Slurm job step (srun). {_TF_CONFIG_EXAMPLE} For one host use --strategy mirrored."
                )
            os.environ["TF_CONFIG"] = json.dumps(slurm_tf_config())
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def context_of(strategy):
    """The `Context` of `strategy`, or `None` for one replica."""
    replicas = strategy.num_replicas_in_sync
    if replicas <= 1:
        return None
    rank, kind = 0, "mirrored"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "multiworker"
        resolver = strategy.cluster_resolver
        if resolver.task_type == "chief":
            rank = 0
        else:
            has_chief = "chief" in resolver.cluster_spec().as_dict()
            rank = int(resolver.task_id) + int(has_chief)
    return Context(rank, replicas, 0, kind, strategy)


def initialize(strategy=None, owner=None):
    """The data-parallel `Context` of this process, or `None` for one replica.

    `strategy` (a name of `_names.TF_STRATEGIES`) makes that strategy and sets it as the
    process's current one (the CLI). Otherwise the strategy is `owner`'s (a
    Keras model built in a strategy's scope) or the current one.
    """
    if strategy is not None:
        if _STATE["context"] is None or _STATE["context"].backend != strategy:
            made = context_of(make_strategy(strategy))
            if made is not None:  # one replica: nothing to distribute
                tf.distribute.experimental_set_strategy(made.strategy)
            _STATE["context"] = made
        return _STATE["context"]
    if _STATE["context"] is not None:
        return _STATE["context"]
    if owner is not None and getattr(owner, "distribute_strategy", None) is not None:
        return context_of(owner.distribute_strategy)
    return context_of(tf.distribute.get_strategy())


def context(owner=None):
    """The `Context` of the strategy the CLI set, else of the current strategy, else of the one `owner`
    (a Keras model) was built under (`None` for one replica)."""
    found = _STATE["context"] or context_of(tf.distribute.get_strategy())
    if found is None and getattr(owner, "distribute_strategy", None) is not None:
        found = context_of(owner.distribute_strategy)
    return found


def shutdown():
    """Drops the strategy `initialize(strategy=...)` set (end of a job, tests)."""
    if _STATE["context"] is not None:
        tf.distribute.experimental_set_strategy(None)
    _STATE["context"] = None


# ---------------------------------------------------------------------------- the batch
@dataclasses.dataclass
class Shard:
    """This replica's `rows` (a tensor) of one global batch of `size` rows (a tensor)."""

    rows: object
    size: object
    sync_batchnorm: bool


def shard_rows(size, replica, replicas, groups=1):
    """The rows of a `size`-row batch that `replica` trains on (int32 tensor).

    The rule of `torch_distributed.shard_rows`, in TensorFlow ops (the batch
    size may be known only when the step runs): `groups` equal blocks, each
    split into `replicas` contiguous parts, the first `block % replicas` one
    row longer; the replica takes its part of every block.
    """
    size = tf.cast(size, tf.int32)
    block = size // groups
    base, extra = block // replicas, block % replicas
    start = replica * base + tf.minimum(replica, extra)
    length = base + tf.cast(replica < extra, tf.int32)
    part = start + tf.range(length)
    return tf.concat([g * block + part for g in range(groups)], axis=0)


@contextlib.contextmanager
def shard_scope(shard):
    previous = getattr(_LOCAL, "shard", None)
    _LOCAL.shard = shard
    try:
        yield shard
    finally:
        _LOCAL.shard = previous


def current_shard():
    return getattr(_LOCAL, "shard", None)


def global_draw(draw, shape):
    """`draw(shape)` inside a shard: drawn for the global batch, this replica's rows kept."""
    shard = current_shard()
    if shard is None or len(shape) == 0:
        return draw(shape)
    return tf.gather(draw((shard.size, *shape[1:])), shard.rows)


def _replica_rows(replica, x, y, sample_weight, groups):
    """This replica's rows of the global batch: `(x, y, sample_weight, rows, size)`.

    Keras hands replica `r` the `r`-th contiguous block of the global batch,
    which is its `shard_rows` when `groups == 1`. Two-view batches are
    reassembled first (a sum of zero-padded blocks: exact, and an all-reduce
    rather than an all-gather, which MultiWorkerMirroredStrategy 2.21 refuses
    in replica context) and re-sharded so that pairs stay on one replica.
    """
    replicas = replica.num_replicas_in_sync
    index = replica.replica_id_in_sync_group
    local = tf.shape(x)[0]
    counts = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.one_hot(index, replicas) * tf.cast(local, tf.float32))
    counts = tf.cast(tf.round(counts), tf.int32)
    size = tf.reduce_sum(counts)
    offset = tf.reduce_sum(counts[:index])
    block = offset + tf.range(local)
    if groups == 1:
        return x, y, sample_weight, block, size

    def whole(values):
        if values is None:
            return None
        dtype = values.dtype
        padded = tf.scatter_nd(
            block[:, None], tf.cast(values, tf.float64), tf.concat([[size], tf.shape(values)[1:]], 0)
        )
        return tf.cast(replica.all_reduce(tf.distribute.ReduceOp.SUM, padded), dtype)

    rows = shard_rows(size, index, replicas, groups)
    x, y, sample_weight = (None if v is None else tf.gather(whole(v), rows) for v in (x, y, sample_weight))
    return x, y, sample_weight, rows, size


def replica_batch(trainer, x, y, sample_weight):
    """This replica's `ReplicaBatch` of one step of `trainer` (inside `strategy.run`); for one replica,
    the whole batch (`engine.Batch`)."""
    replica = tf.distribute.get_replica_context()
    replicas = replica.num_replicas_in_sync if replica is not None else 1
    if replicas == 1:
        return Batch(x, y, sample_weight)
    x, y, sample_weight, rows, size = _replica_rows(replica, x, y, sample_weight, trainer.batch_groups())
    shard = Shard(rows, size, trainer.sync_batchnorm)
    return ReplicaBatch(replica, shard, x, y, sample_weight, _share_of_batch(tf.shape(rows)[0], size, replicas))


class ReplicaBatch(Batch):
    """This replica's rows of a step (`engine.Batch`): random draws and synchronized BatchNorm see the
    global batch (`shard_scope`), each loss term is the replica's share, the optimizer sums the gradients
    over the replicas and one all-reduce sums the metric sums."""

    distributed = True

    def __init__(self, replica, shard, x, y, sample_weight, loss_share):
        super().__init__(x, y, sample_weight)
        self.replica = replica
        self.shard = shard
        self.loss_share = loss_share  # `total` and `terms` are then the replica's shares: metric weight 1

    def scope(self):
        return shard_scope(self.shard)

    def reduce(self, gradients, variables, metric_sums):
        # The gradients: summed over the replicas by `optimizer.apply`.
        return gradients, self.replica.all_reduce(tf.distribute.ReduceOp.SUM, metric_sums)

    def reduce_gradients(self, gradients):
        present = [i for i, g in enumerate(gradients) if g is not None]
        summed = self.replica.all_reduce(tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
        out = list(gradients)
        for i, g in zip(present, summed):
            out[i] = g
        return out

    def average(self, variables):
        if not self.shard.sync_batchnorm:
            average_variables(self.replica, variables)

    def logs(self, logs):
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3.15 averages the step's logs over workers with `strategy.reduce(..., axis=0)`,
            # which needs an axis: give each log one (the average of equal values is the value).
            return {name: tf.reshape(value, (1,)) for name, value in logs.items()}
        return logs


def _multi_worker(strategy):
    in_cluster = getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and in_cluster()


@contextlib.contextmanager
def replica_share(x):
    """This replica's share of the global batch `x` belongs to (`rows / batch`), with its
    rows as the shard of random draws (`trainer.test_step`); `1.0` for one replica."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        yield 1.0
        return
    _, _, _, rows, size = _replica_rows(replica, x, None, None, groups=1)
    with shard_scope(Shard(rows, size, sync_batchnorm=False)):
        yield tf.cast(tf.shape(rows)[0], tf.float32) / tf.cast(size, tf.float32)


_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def _share_of_batch(rows, size, replicas):
    """`share(loss, value)`: a replica's loss value as its share of the one-device value.

    The optimiser sums the replicas' gradients, so a batch mean enters as
    `local mean * rows / size`. Keras' `Loss.__call__` already multiplies a
    mean by `1 / replicas` under a strategy (`scale_loss_for_distribution`),
    which is right only when every replica has `size / replicas` rows: undo it
    and weight by the rows. A summed loss (`reduction="sum"`) is its own share.
    """
    factor = tf.cast(replicas, tf.float64) * tf.cast(rows, tf.float64) / tf.cast(size, tf.float64)

    def share(loss, value):
        if loss.reduction not in _MEAN_REDUCTIONS:
            return value
        return value * tf.cast(factor, value.dtype)

    return share


def average_variables(replica, variables):
    """Replaces float `variables` (moving statistics, the teacher) by their mean over the replicas."""
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    if not floats:
        return
    # Tensors, not the variables: MultiWorkerMirroredStrategy takes a value's device as the all-reduce's
    # destination, and a variable's is empty there ("destinations can not be empty").
    means = replica.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in floats])
    for v, mean in zip(floats, means):
        v.assign(mean)


# ---------------------------------------------------------------------------- BatchNorm
def synchronized_moments(x, axes):
    """Batch mean and (biased) variance over the global batch, and the count, or `None`.

    Two passes, as one device computes them; differentiable (the replica
    context's all-reduce sums the gradients back).
    """
    shard = current_shard()
    if shard is None or not shard.sync_batchnorm:
        return None
    replica = tf.distribute.get_replica_context()
    axes = [a % len(x.shape) for a in axes]
    count = tf.cast(shard.size, x.dtype)
    for a in axes:
        if a != 0:
            count = count * tf.cast(tf.shape(x)[a], x.dtype)
    mean = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(x, axis=axes)) / count
    keep = [1 if a in axes else -1 for a in range(len(x.shape))]
    centered = x - tf.reshape(mean, keep)
    variance = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(centered), axis=axes)) / count
    return mean, variance, count


# ---------------------------------------------------------------------------- a worker that died
# How TensorFlow 2.21 reports a dead peer of MultiWorkerMirroredStrategy: the coordination service
# stops getting its heartbeats (about 10 s) and aborts the collectives, or its connection is reset.
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)
_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")


def worker_failure(error):
    """The `DistributedError` to raise for `error` when it is TensorFlow aborting this multi-worker
    job because another worker stopped (killed, crashed, preempted); `None` for any other error."""
    found = context()
    if found is None or found.backend != "multiworker" or not isinstance(error, _PEER_FAILURES):
        return None
    message = str(getattr(error, "message", error))
    resolver = found.strategy.cluster_resolver
    me = (resolver.task_type, str(resolver.task_id))
    others = sorted({f"{job} {task}" for job, task in _TASK.findall(message) if (job, task) != me})
    if "heartbeat" in message or "unhealthy" in message:
        how = "stopped sending heartbeats"
    elif "Connection reset" in message or "Socket closed" in message or "failed to connect" in message:
        how = "closed its connection"
    else:
        how = f"stopped answering (TensorFlow: {type(error).__name__})"
    who = " and ".join(others) if others else "another worker"
    return DistributedError(
        f"{who.capitalize()} of this MultiWorkerMirroredStrategy job {how}: it was killed or crashed, and "
        f"{resolver.task_type} {resolver.task_id} cannot go on without it, so it stops too. Re-run the same "
        "command on every worker (the same TF_CONFIG) to resume from the last backup (keras-rpat: every "
        "--checkpoint-every N steps, else the last finished epoch)."
    )


# ---------------------------------------------------------------------------- evaluation
def evaluation_strategy(owner=None):
    """The strategy an evaluation shards over: the CLI's or the current one, else the one
    `owner` (a model) was built under; `None` for one replica."""
    found = context()
    if found is None and owner is not None and getattr(owner, "distribute_strategy", None) is not None:
        found = context_of(owner.distribute_strategy)
    return None if found is None else found.strategy


def map_rows(fn, arrays, owner=None, seed_generators=()):
    """`fn(*tensors)` on one evaluation batch of `arrays`, as NumPy arrays of every row.

    Under a strategy each replica computes its rows (`shard_rows`) in a
    `shard_scope` (random draws are its rows of the one-device draw) inside
    `strategy.run`, and the rows are all-reduced (zero-padded, exact), so
    every worker gets the one-device values. `seed_generators` (those `fn`
    draws from) advance as on one device. A batch smaller than the replica
    count is computed whole, on every worker.
    """
    strategy = evaluation_strategy(owner)
    size = len(arrays[0])
    if strategy is None or size < strategy.num_replicas_in_sync:
        return tuple(np.asarray(o) for o in fn(*map(tf.convert_to_tensor, arrays)))
    replicas = strategy.num_replicas_in_sync

    def replica_inputs(ctx):
        rows = shard_rows(size, ctx.replica_id_in_sync_group, replicas).numpy()
        return tuple(tf.convert_to_tensor(a[rows]) for a in arrays)

    def replica_fn(*inputs):
        replica = tf.distribute.get_replica_context()
        rows = shard_rows(size, replica.replica_id_in_sync_group, replicas)
        with shard_scope(Shard(rows, tf.constant(size), sync_batchnorm=False)):
            outputs = fn(*inputs)
        return tuple(_gather_rows(replica, tf.convert_to_tensor(o), rows, size) for o in outputs)

    inputs = strategy.experimental_distribute_values_from_function(replica_inputs)
    with _mirrored_generators(strategy, seed_generators), _without_eager_warning():
        outputs = strategy.run(replica_fn, args=tuple(inputs))
    return tuple(strategy.experimental_local_results(o)[0].numpy() for o in outputs)


def _gather_rows(replica, values, rows, size):
    """The `size`-row tensor whose `rows` are each replica's `values` (float64 sum of one value and zeros: exact)."""
    shape = tf.concat([[size], tf.shape(values)[1:]], 0)
    full = tf.scatter_nd(rows[:, None], tf.cast(values, tf.float64), shape)
    return tf.cast(replica.all_reduce(tf.distribute.ReduceOp.SUM, full), values.dtype)


class _EagerRunWarning(logging.Filter):
    def filter(self, record):
        return "eagerly has significant overhead" not in record.getMessage()


@contextlib.contextmanager
def _without_eager_warning():
    """Drops TensorFlow's warning that `strategy.run` outside a `tf.function` is slow: an evaluation
    batch runs eagerly on purpose (its attack is Python, traced anew for every model and attack)."""
    logger, quiet = tf.get_logger(), _EagerRunWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def place_generator(generator):
    """Gives `generator` (a SeedGenerator made outside the open strategy scope, e.g. an attack's made
    before the trainer) a state mirrored over the strategy's replicas, with the same value."""
    if not tf.distribute.has_strategy():
        return
    if tf.distribute.get_strategy().extended.variable_created_in_scope(generator.state.value):
        return
    mirrored = keras.random.SeedGenerator(0).state
    mirrored.assign(generator.state.value)
    generator.state = mirrored


# SeedGenerator -> a generator of the same dtype whose state is mirrored over the strategy's replicas.
_MIRRORED_GENERATORS = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _mirrored_generators(strategy, generators):
    """Lends each generator a mirrored state for `strategy.run`, then keeps the state it ends with.

    A generator made outside the strategy's scope has one state variable that
    every replica would advance; a mirrored one advances once, as on one device.
    """
    lent = []
    for generator in generators:
        twin = _MIRRORED_GENERATORS.get(generator)
        if twin is None or twin[0] is not strategy:
            with strategy.scope():
                twin = _MIRRORED_GENERATORS[generator] = (strategy, keras.random.SeedGenerator(0))
        mirrored = twin[1].state
        mirrored.assign(generator.state.value)
        lent.append((generator, generator.state))
        generator.state = mirrored
    try:
        yield
    finally:
        for generator, own in lent:
            own.assign(tf.convert_to_tensor(generator.state.value))
            generator.state = own


# ---------------------------------------------------------------------------- what the workers agree on
def all_gather_object(value):
    """Every worker's `value` (picklable), in rank order: a list under MultiWorkerMirroredStrategy
    with several workers, `None` for one process (one worker, or MirroredStrategy's replicas)."""
    found = context()
    if found is None or not _multi_worker(found.strategy):
        return None
    workers = _worker_count(found.strategy)
    data = pickle.dumps(value)
    lengths = np.zeros(workers, np.int64)
    lengths[found.rank] = len(data)
    lengths = _sum_over_workers(found.strategy, lengths)
    # Every worker's bytes in its own slot of 8-byte words: a sum with zeros, exact.
    words = (lengths + 7) // 8
    offsets = np.concatenate([[0], np.cumsum(words)])
    payload = np.zeros(int(offsets[-1]), np.int64)
    mine = np.frombuffer(data + b"\0" * (8 * int(words[found.rank]) - len(data)), np.int64)
    payload[offsets[found.rank] : offsets[found.rank + 1]] = mine
    payload = _sum_over_workers(found.strategy, payload).tobytes()
    return [pickle.loads(payload[8 * offsets[r] : 8 * offsets[r] + lengths[r]]) for r in range(workers)]


def from_primary(value):
    """The chief's `value` on every worker (`value` itself for one process)."""
    gathered = all_gather_object(value if context() is None or context().is_primary else None)
    return value if gathered is None else gathered[0]


def _worker_count(strategy):
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("worker", [])) + len(spec.get("chief", []))


_SUMS = weakref.WeakKeyDictionary()  # strategy -> its traced `_sum_over_workers`


def _sum_over_workers(strategy, array):
    """The sum over the workers of each worker's int64 NumPy `array` (its first replica's; the others add zeros)."""
    if strategy not in _SUMS:
        local = strategy.num_replicas_in_sync // _worker_count(strategy)

        def contribution(values):
            replica = tf.distribute.get_replica_context()
            first = tf.equal(replica.replica_id_in_sync_group % local, 0)
            return replica.all_reduce(tf.distribute.ReduceOp.SUM, values * tf.cast(first, tf.int64))

        # Traced once (any length): eager collectives are slow, and TensorFlow warns on each.
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def summed(values):
            return strategy.experimental_local_results(strategy.run(contribution, args=(values,)))[0]

        _SUMS[strategy] = summed
    try:
        return _SUMS[strategy](tf.constant(array, tf.int64)).numpy()
    except _PEER_FAILURES as e:  # a worker died outside `fit` (between runs, in an evaluation)
        raise worker_failure(e) or e from e


# ---------------------------------------------------------------------------- a process per replica
@dataclasses.dataclass(frozen=True)
class ReplicaProcesses:
    """A job of one process per replica, as `torchrun` describes one: what this worker's replicas need to join it.

    Attributes:
        world_size: the replicas in sync (every worker's).
        ranks: each local replica's global index (`replica_id_in_sync_group`: the chief's replicas first).
        gpus: each local replica's GPU index, `None` for a CPU device.
        master_addr, master_port: the rendezvous, on the chief.
    """

    world_size: int
    ranks: tuple
    gpus: tuple
    master_addr: str
    master_port: int


def replica_processes(context):
    """The `ReplicaProcesses` of `context`'s strategy, or `None` for one replica.

    Under `MirroredStrategy` (one process) the rendezvous is a free port on
    127.0.0.1. Under `MultiWorkerMirroredStrategy` it is the chief's host in
    the cluster spec and a port the chief picks, sent to the other workers by an
    all-reduce: a collective, so every worker must call this, as every worker runs
    the same evaluation.
    """
    if context is None:
        return None
    strategy = context.strategy
    devices = [tf.DeviceSpec.from_string(d) for d in strategy.extended.worker_devices]
    first = context.rank * len(devices)  # MultiWorkerMirroredStrategy's replica_id_in_sync_group
    if _multi_worker(strategy):
        cluster = strategy.cluster_resolver.cluster_spec().as_dict()
        address = (cluster.get("chief") or cluster["worker"])[0]
        host = address.rsplit(":", 1)[0].strip("[]")
        port = from_primary(_free_port("") if context.is_primary else None)
    else:
        host = "127.0.0.1"
        port = _free_port(host)
    return ReplicaProcesses(
        world_size=context.world_size,
        ranks=tuple(range(first, first + len(devices))),
        gpus=tuple(d.device_index if d.device_type == "GPU" else None for d in devices),
        master_addr=host,
        master_port=port,
    )


def _free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
