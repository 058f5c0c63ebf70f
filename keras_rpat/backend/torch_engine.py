"""`TorchEngine`: how PyTorch runs `RPATTrainer.step` on the Keras path (see `keras_rpat.backend.engine`).

The weight gradients come from `backward()` into each variable's `.grad`,
the update and `after_update` run under `torch.no_grad()`, and in a torchrun
job each rank takes its rows of the global batch (`torch_distributed.RankBatch`).
The torch fast path (`keras_rpat.fast_path.runtime.FastRuntime`) is this engine over the
lowered models, with `torch.autograd.grad` and its own forward context.
"""

import torch

from keras_rpat.backend import engine
from keras_rpat.backend import torch_distributed


class TorchEngine(engine.Engine):
    """The PyTorch engine of one trainer (Keras path).

    Attributes:
        distributed_ready: whether this trainer's first data-parallel step
            (the batch check, rank 0's weights broadcast) was taken.
    """

    distributed_ready = False

    def shard(self, x, y, sample_weight):
        batch = torch_distributed.rank_batch(self.trainer, x, y, sample_weight, first_step=not self.distributed_ready)
        self.distributed_ready = self.distributed_ready or batch.distributed
        return batch

    def gradients(self, loss_fn, variables):
        for v in variables:
            v.value.grad = None
        loss, aux = loss_fn()
        loss.backward()
        return [v.value.grad for v in variables], aux

    def update_context(self):
        return torch.no_grad()
