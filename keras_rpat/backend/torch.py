"""PyTorch implementations of the backend hooks (see `keras_rpat.backend`)."""

import contextlib
import random
import sys

import keras
import numpy as np
import torch

from keras_rpat.backend import torch_distributed
from keras_rpat.backend import torch_engine
from keras_rpat.backend.torch_random import get_random_state  # noqa: F401  (backend hooks)
from keras_rpat.backend.torch_random import keras_device_and_dtype
from keras_rpat.backend.torch_random import random_beta  # noqa: F401
from keras_rpat.backend.torch_random import random_normal  # noqa: F401
from keras_rpat.backend.torch_random import random_uniform  # noqa: F401
from keras_rpat.backend.torch_random import set_random_state  # noqa: F401


def input_gradient(loss_fn, x):
    # Keras' torch test loop runs under `torch.no_grad()`; attacks always need
    # the input gradient, so enable it locally.
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, [x])
    return loss.detach(), grad.detach()


def no_grad():
    return torch.no_grad()


def assign_moving_average(targets, sources, decay):
    with torch.no_grad():
        pairs = [(t.value, s.value) for t, s in zip(targets, sources)]
        floats = [(t, s) for t, s in pairs if t.is_floating_point()]
        others = [(t, s) for t, s in pairs if not t.is_floating_point()]
        for t, s in others:  # e.g. seed-generator states: copied, not averaged
            t.copy_(s)
        if not floats:
            return
        t = [p[0] for p in floats]
        s = [p[1].to(p[0].dtype) for p in floats]
        if isinstance(decay, (int, float)) and decay == 0.0:
            torch._foreach_copy_(t, s)
        elif torch.is_tensor(decay):  # a dynamic decay, computed on the device: no host sync
            weights = {dtype: (1.0 - decay).to(dtype) for dtype in {x.dtype for x in t}}
            torch._foreach_lerp_(t, s, [weights[x.dtype] for x in t])
        else:
            # t = decay * t + (1 - decay) * s == t + (1 - decay) * (s - t)
            torch._foreach_lerp_(t, s, 1.0 - decay)


def train_engine(trainer):
    """The Keras path's engine (the trainer takes the fast path's runtime first where it applies)."""
    return torch_engine.TorchEngine(trainer)


def initialize_distributed(owner=None, strategy=None):
    if strategy is not None:
        raise torch_distributed.DistributedError(
            f"strategy={strategy!r} names a tf.distribute strategy, which runs on the tensorflow backend only "
            "(KERAS_BACKEND=tensorflow). On torch, launch one process per device with "
            "`torchrun --nproc_per_node=N ...` instead."
        )
    return torch_distributed.initialize()


def distributed_context(owner=None):
    return torch_distributed.context()


def map_rows(fn, arrays, owner=None, seed_generators=()):
    # Random draws follow the rank's shard (torch_random): the generators need nothing.
    return torch_distributed.map_rows(fn, arrays)


def all_gather_object(value):
    return torch_distributed.all_gather_object(value)


def from_primary(value):
    return torch_distributed.from_primary(value)


def worker_failure(error):
    # torchrun stops every rank of a job one of whose ranks died, and names it.
    return None


@contextlib.contextmanager
def replica_share(x):
    # torchrun ranks evaluate whole batches in `evaluate()`: the one-process step.
    yield 1.0


def synchronized_moments(x, axes):
    return torch_distributed.synchronized_moments(x, axes)


def set_random_seed(seed):
    if "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_name():
    device = str(keras_device_and_dtype()[0])
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name()})"
    return device
