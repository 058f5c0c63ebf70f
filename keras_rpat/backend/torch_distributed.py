"""Data-parallel training on `torch.distributed` (one process per device, under `torchrun`).

The shape is DistributedDataParallel's, without its reducer (which breaks when
attack forwards run through the wrapped module, "Expected to have finished
reduction"): every rank holds the whole model, trains on its rows of each
global batch, and after the backward the gradients are summed over the ranks
in one flattened all-reduce, together with the step's metric sums, before the
trainer's own optimiser step. When Keras ships data parallelism for torch,
the step can hand this job to it; the rest (`Shard`, the random rows, the
synchronized batch statistics) stays.

The N ranks together compute the step of one process on the global batch:

- Every rank builds the same global batch (the training sequence is a
  function of `(seed, epoch, index)`) and keeps its rows (`Shard`): a
  contiguous block per rank, in rank order, so that ranks `0..N-1` together
  hold the batch (pairs of halves for two-view batches stay pairs).
- Each rank's loss is its mean over its rows weighted by `rows / batch`, so
  the sum over ranks is the one-process batch mean, and so are the gradients.
- Random starts: a per-sample draw is made for the global batch from the
  shared seed and each rank keeps its rows. Ranks draw different starts,
  reproducible per seed, and a run does not depend on the number of ranks.
- With `sync_batchnorm`, BatchNorm's batch mean and variance are taken over
  the global batch (two passes, as one process does), with a differentiable
  all-reduce. Without it, each rank normalises with its own rows and the
  moving statistics are averaged over the ranks after every step.
- Initial weights are broadcast from rank 0 before the first step.

Backend `gloo` on CPU, `nccl` on CUDA (each rank on `cuda:LOCAL_RANK`).
"""

import atexit
import contextlib
import dataclasses
import os

import numpy as np
import torch
import torch.distributed as dist
from keras import ops

from keras_rpat.backend import TORCHRUN_VARIABLES
from keras_rpat.backend import Context
from keras_rpat.backend import DistributedError
from keras_rpat.backend.engine import Batch

_STATE = {"context": None, "shard": None}


def launched_by_torchrun():
    """Whether this process was started by `torchrun` with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def initialize():
    """Joins the process group `torchrun` describes; returns its `Context` (or `None` for one process).

    Idempotent. Raises `DistributedError` when some, but not all, of torchrun's
    variables are set (a rank started by hand).
    """
    if _STATE["context"] is not None:
        return _STATE["context"]
    present = [v for v in TORCHRUN_VARIABLES if os.environ.get(v)]
    if not present or not launched_by_torchrun() and not dist.is_initialized():
        return None
    missing = [v for v in TORCHRUN_VARIABLES if not os.environ.get(v)]
    if missing and not dist.is_initialized():
        raise DistributedError(
            f"This process has {present} set but not {missing}, so it cannot join a data-parallel job. "
            "Start every rank with torchrun, e.g. `torchrun --nproc_per_node=2 -m keras_rpat.cli train ...`, "
            "or unset WORLD_SIZE to train in one process."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(shutdown)
    context = Context(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    _STATE["context"] = context
    return context


def context():
    """The `Context` of the job this process joined, or `None`."""
    return _STATE["context"]


def require_context(option):
    """The job's `Context`; a `DistributedError` naming `option` when there is none."""
    found = initialize()
    if found is None:
        raise DistributedError(
            f"`{option}` needs a data-parallel job, but this process runs alone (no torchrun variables "
            f"{TORCHRUN_VARIABLES}). Launch it with `torchrun --nproc_per_node=N ...`, or drop `{option}`."
        )
    return found


def shutdown():
    """Leaves the process group (end of a job)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE["context"] = None


def barrier():
    if _STATE["context"] is not None:
        dist.barrier()


# ---------------------------------------------------------------------------- the batch
@dataclasses.dataclass
class Shard:
    """This rank's rows of one global batch of `size` rows."""

    rows: np.ndarray
    size: int
    sync_batchnorm: bool
    device_rows: object = None

    @property
    def weight(self):
        """The rank's share of the batch mean: `rows / size`."""
        return len(self.rows) / self.size


def shard_rows(size, rank, world_size, groups=1):
    """The rows of a `size`-row batch that `rank` trains on.

    The batch is `groups` equal blocks (two for two-view batches); each block is
    split into `world_size` contiguous parts, the first `size % world_size`
    one row longer, and the rank takes its part of every block.
    """
    block = size // groups
    parts = [np.array_split(np.arange(g * block, (g + 1) * block), world_size)[rank] for g in range(groups)]
    return np.concatenate(parts)


def check_batch(size, world_size):
    if size % world_size:
        raise DistributedError(
            f"The global batch of {size} images does not split over {world_size} ranks. "
            f"Pick a batch size that is a multiple of {world_size} (e.g. --batch-size "
            f"{max(world_size, size - size % world_size)}), or launch {world_size} ranks that divide it."
        )


@contextlib.contextmanager
def shard_scope(shard):
    """Makes `shard` the batch that random draws and synchronized BatchNorm see."""
    previous = _STATE["shard"]
    _STATE["shard"] = shard
    try:
        yield shard
    finally:
        _STATE["shard"] = previous


def current_shard():
    return _STATE["shard"]


def synchronizing_batchnorm():
    """Whether training-mode BatchNorm takes the global batch's statistics now."""
    shard = _STATE["shard"]
    return shard is not None and shard.sync_batchnorm


def global_rows(shape):
    """For a per-sample draw of `shape` inside a shard: `(global shape, row indices)`, else `(shape, None)`.

    The caller draws the global shape and keeps the rows (a device tensor).
    """
    shard = _STATE["shard"]
    if shard is None or len(shape) == 0 or int(shape[0]) != len(shard.rows):
        return shape, None
    return (shard.size, *shape[1:]), shard.device_rows


def rank_batch(trainer, x, y, sample_weight, first_step):
    """This rank's `RankBatch` of one step of `trainer` on the global batch `x, y`; in a process alone,
    the whole batch (`engine.Batch`). At the `first_step` of a trainer in a job, checks that the batch
    splits over the ranks and broadcasts rank 0's weights."""
    found = _STATE["context"]
    if found is None:
        return Batch(x, y, sample_weight)
    if trainer.capture and x.is_cuda:
        raise DistributedError(
            "capture=True (CUDA graphs) is not supported in a data-parallel job yet; pass capture=False."
        )
    size = int(x.shape[0])
    if first_step:
        check_batch(size, found.world_size)
        broadcast_variables(trainer.weights)
    shard = Shard(shard_rows(size, found.rank, found.world_size, trainer.batch_groups()), size, trainer.sync_batchnorm)
    rows = torch.as_tensor(shard.rows, device=x.device)
    shard.device_rows = rows
    return RankBatch(shard, x[rows], y[rows], None if sample_weight is None else sample_weight[rows])


class RankBatch(Batch):
    """This rank's rows of a step (`engine.Batch`): random draws and synchronized BatchNorm see the global
    batch (`shard_scope`), the loss is weighted by the rank's share, and one all-reduce sums the gradients
    and the metric sums (AWP's ascent gradients: one more)."""

    distributed = True

    def __init__(self, shard, x, y, sample_weight):
        super().__init__(x, y, sample_weight)
        self.shard = shard
        self.loss_weight = shard.weight

    def scope(self):
        return shard_scope(self.shard)

    def reduce(self, gradients, variables, metric_sums):
        return all_reduce_step(list(gradients), variables, metric_sums)

    def reduce_gradients(self, gradients):
        return all_reduce_sum(list(gradients))

    def average(self, variables):
        if not self.shard.sync_batchnorm:
            average_variables(variables)


def map_rows(fn, arrays):
    """`fn(*tensors)` (a tuple of per-row tensors) on one evaluation batch of `arrays` (NumPy, equal
    length), as NumPy arrays of every row: each rank computes its rows, in a `shard_scope` (the
    attack's random starts are the one-process ones), and the rows are all-reduced. Alone, or for
    a batch too small to split, every rank computes the whole batch."""
    size = len(arrays[0])
    found = _STATE["context"]
    if found is None or size < found.world_size:
        return tuple(ops.convert_to_numpy(o) for o in fn(*map(ops.convert_to_tensor, arrays)))
    rows = shard_rows(size, found.rank, found.world_size)
    shard = Shard(rows, size, sync_batchnorm=False)
    shard.device_rows = torch.as_tensor(rows, device=_device())
    with shard_scope(shard):
        outputs = fn(*(ops.convert_to_tensor(a[rows]) for a in arrays))
        return tuple(_gather_rows(ops.convert_to_numpy(o), rows, size) for o in outputs)


def _gather_rows(values, rows, size):
    """The `size`-row array whose `rows` are each rank's `values` (its dtype kept)."""
    values = np.asarray(values)
    # float64 is exact for bool, float32 and int32 values; each row is one rank's plus zeros.
    full = torch.zeros((size, *values.shape[1:]), dtype=torch.float64, device=_device())
    full[torch.as_tensor(rows, device=full.device)] = torch.as_tensor(values.astype(np.float64)).to(full)
    dist.all_reduce(full)
    return full.cpu().numpy().astype(values.dtype)


def is_primary():
    """Whether this process prints and writes: rank 0, or a process that runs alone."""
    return _STATE["context"] is None or _STATE["context"].is_primary


def dealt_batches(first, count):
    """The rounds of batches `first..count-1` dealt to the ranks in turn: yields
    `(stop, mine)` per round, where round `[start, stop)` gives batch `start + rank`
    to this rank (`mine`, `None` past the end). One process: one batch a round.

    A batch is the one-process batch (same images, same size), so whatever is
    computed on it does not depend on the number of ranks; after each round
    every batch below `stop` is done.
    """
    found = _STATE["context"]
    rank, world = (0, 1) if found is None else (found.rank, found.world_size)
    for start in range(first, count, world):
        yield min(start + world, count), (start + rank if start + rank < count else None)


def any_rank(flags):
    """Element-wise OR over the ranks of a CPU bool tensor (the tensor itself alone)."""
    if _STATE["context"] is None:
        return flags
    summed = flags.to(torch.int32).to(_device())
    dist.all_reduce(summed)
    return summed.cpu() > 0


def merge_rows(values, mine):
    """`values` (CPU, one row per image) with each rank's `mine` rows taken from that rank.

    Rows no rank marks keep this rank's values (equal on every rank). Exact:
    each merged row is one rank's row plus zeros.
    """
    if _STATE["context"] is None:
        return values
    keep = mine.reshape(-1, *([1] * (values.dim() - 1)))
    summed = torch.where(keep, values, torch.zeros_like(values)).to(_device())
    dist.all_reduce(summed)
    return torch.where(any_rank(mine).reshape(keep.shape), summed.cpu(), values)


def from_primary(value):
    """Rank 0's `value` (picklable) on every rank; `value` itself alone."""
    found = _STATE["context"]
    if found is None:
        return value
    box = [value if found.is_primary else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def most_advanced(progress, state):
    """The `state` of the rank whose `progress` (a comparable tuple) is the largest, on every rank.

    For work that every rank records after each collective step (a resumable
    evaluation): after an interruption the ranks' records may be one step
    apart, and the furthest one holds everything the others did.
    """
    found = _STATE["context"]
    if found is None:
        return state
    gathered = [None] * found.world_size
    dist.all_gather_object(gathered, list(progress))
    source = max(range(found.world_size), key=lambda r: (gathered[r], -r))
    box = [state if found.rank == source else None]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if _STATE["context"].backend == "nccl" else "cpu"


# ---------------------------------------------------------------------------- BatchNorm
def synchronized_moments(x, axes):
    """Batch mean and (biased) variance over the global batch, and the count, or `None`.

    Two passes, as one process computes them: the global mean, then the mean
    of the squared deviations from it. Differentiable (the all-reduce's
    backward sums the gradients over the ranks).
    """
    if not synchronizing_batchnorm():
        return None
    shard = _STATE["shard"]
    axes = [a % x.dim() for a in axes]
    count = shard.size
    for a in axes:
        if a != 0:
            count *= x.shape[a]
    mean = _AllReduceSum.apply(x.sum(dim=axes)) / count
    keep = [1 if a in axes else s for a, s in enumerate(x.shape)]
    centered = x - mean.reshape(keep)
    variance = _AllReduceSum.apply(centered.square().sum(dim=axes)) / count
    return mean, variance, count


def sync_batch_norm(h, moving_mean, moving_variance, gamma, beta, momentum, epsilon):
    """Training-mode `F.batch_norm` on NCHW (or NC) `h` with the global batch's statistics.

    `momentum` is torch's convention; the moving variance gets the unbiased
    global variance, as `nn.BatchNorm2d` does in one process.
    """
    axes = [d for d in range(h.dim()) if d != 1]
    mean, variance, count = synchronized_moments(h, axes)
    shape = (1, -1) + (1,) * (h.dim() - 2)
    inv = torch.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * gamma
    y = (h - mean.reshape(shape)) * inv.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    with torch.no_grad():
        correction = count / max(count - 1, 1)
        moving_mean.mul_(1.0 - momentum).add_(mean.detach(), alpha=momentum)
        moving_variance.mul_(1.0 - momentum).add_(variance.detach() * correction, alpha=momentum)
    return y


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


# ---------------------------------------------------------------------------- collectives
def broadcast_variables(variables):
    """Copies rank 0's values of `variables` (Keras variables) to every rank."""
    tensors = [v.value for v in variables]
    if not tensors:
        return
    with torch.no_grad():
        for group in _by_dtype(tensors):
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            _unflatten_into(flat, group)


def all_reduce_step(grads, variables, metric_sums):
    """Sums the (weighted) gradients and the metric sums over the ranks, in one all-reduce.

    `grads` may hold `None` (unused variables): they stay `None`. Returns the
    summed gradients and metric sums.
    """
    summed = all_reduce_sum([*grads, metric_sums])
    return summed[:-1], summed[-1]


def all_reduce_sum(tensors):
    """`tensors` (`None` stays `None`) summed over the ranks, in one all-reduce of their common dtype
    (float64 gradients are not rounded to float32 metric sums)."""
    present = [i for i, t in enumerate(tensors) if t is not None]
    if not present:
        return list(tensors)
    dtype = tensors[present[0]].dtype
    for i in present:
        dtype = torch.promote_types(dtype, tensors[i].dtype)
    flat = torch.cat([tensors[i].reshape(-1).to(dtype) for i in present])
    dist.all_reduce(flat)
    out = list(tensors)
    offset = 0
    for i in present:
        n = tensors[i].numel()
        out[i] = flat[offset : offset + n].view(tensors[i].shape).to(tensors[i].dtype)
        offset += n
    return out


def average_variables(variables):
    """Replaces float `variables` (BatchNorm moving statistics) by their mean over the ranks."""
    tensors = [v.value for v in variables if v.value.is_floating_point()]
    if not tensors:
        return
    world = dist.get_world_size()
    with torch.no_grad():
        for group in _by_dtype(tensors):
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat /= world
            _unflatten_into(flat, group)


def all_gather_object(value):
    """Every rank's `value` (picklable), in rank order; `None` alone."""
    found = _STATE["context"]
    if found is None:
        return None
    gathered = [None] * found.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _by_dtype(tensors):
    groups = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _unflatten_into(flat, tensors):
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view(t.shape))
        offset += n
