"""What an autodiff engine supplies to `RPATTrainer.step`, the train step written once.

The step (`keras_rpat/trainer.py`) runs the same public hooks on every backend:
`attack_views`, `view_losses`, the optimizer, `after_update`, `update_metrics`
(or `metric_sums` / `update_metrics_from_sums` in a data-parallel job). An
`Engine` supplies what differs:

- `run(x, y, sample_weight)`: runs `trainer.step` (the torch fast path
  replays it as a CUDA graph);
- `shard(x, y, sample_weight)`: this device's `Batch` of the step;
- `forward_context(x)`: the context of the forward passes (the fast path's
  bf16 autocast and shared kernel views);
- `gradients(loss_fn, variables)`: how weight gradients are taken
  (`backward()`, `torch.autograd.grad`, `tf.GradientTape`);
- `update_context()`: the context of the update (`torch.no_grad`).

A `Batch` is this device's rows and the data-parallel reductions: the whole
batch and nothing to reduce for a process alone (this module);
`torch_distributed.RankBatch` (torchrun) and `tensorflow_distributed.ReplicaBatch`
(tf.distribute) take their rows of the global batch and sum over the devices.

The engines: `backend.torch_engine.TorchEngine` (the Keras path on torch),
`keras_rpat.fast_path.runtime.FastRuntime` (the torch fast path) and
`backend.tensorflow.TensorFlowEngine` and `backend.jax_engine.JaxEngine`
(`gradients` with `jax.value_and_grad` over the variables' values, the step
over Keras' stateless state in one `jax.jit`).
"""

import contextlib


class Batch:
    """This device's rows of one step's batch, and how a data-parallel job reduces them.

    This class is a process alone: the whole batch, nothing to reduce.

    Attributes:
        x, y, sample_weight: the rows this device trains on.
        distributed: whether the step is one device's part of a data-parallel
            step (then the metrics go through `metric_sums`, `reduce`,
            `average` and `logs`).
        loss_weight: the factor of this device's total loss (`rows / batch`:
            its share of the batch mean), or `None` for 1.
        loss_share: `loss_share(loss, value)`, this device's share of each
            loss term, or `None` (tf.distribute: see `tensorflow_distributed`).
    """

    distributed = False
    loss_weight = None
    loss_share = None

    def __init__(self, x, y, sample_weight=None):
        self.x, self.y, self.sample_weight = x, y, sample_weight

    def scope(self):
        """The context in which this device's part of the step runs (a data-parallel batch: its shard)."""
        return contextlib.nullcontext()

    def __enter__(self):
        self._entered = self.scope()
        self._entered.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._entered.__exit__(*exc_info)

    @property
    def metric_weight(self):
        """The weight of this device's loss terms in `trainer.metric_sums`."""
        return 1.0 if self.loss_weight is None else self.loss_weight

    def reduce(self, gradients, variables, metric_sums):
        """The gradients and the metric sums summed over the devices."""
        return gradients, metric_sums

    def reduce_gradients(self, gradients):
        """`gradients` (`None` for an unused variable) summed over the devices, as `reduce` sums the weight
        gradients (each device's loss weighted by `loss_weight` or `loss_share`): AWP's ascent direction."""
        return gradients

    def average(self, variables):
        """After the update: averages the float `variables` (non-trainable) over the devices when each normalised
        its own rows (no synchronized BatchNorm)."""

    def logs(self, logs):
        """The step's logs as the engine returns them."""
        return logs


class Engine:
    """How one autodiff engine runs the train step of one trainer (see the module doc).

    Per-trainer engine state (the torch fast path's lowered models, whether
    a data-parallel job broadcast the initial weights) lives here.

    Attributes:
        trainer: the `RPATTrainer`.
        lowered: whether the step runs the trainer's models lowered into
            torch kernels (the torch fast path).
    """

    lowered = False

    def __init__(self, trainer):
        self.trainer = trainer

    def train_step(self, data):
        """What `fit` runs on a batch (`RPATTrainer.train_step`): `run` on its tensors. (JAX's
        engine takes the variables' values too, as Keras' JAX trainer passes them.)"""
        return self.run(*self.trainer.unpack(data))

    def test_step(self, data):
        """What `evaluate` runs on a batch: `trainer.evaluation_step` on its tensors."""
        return self.trainer.evaluation_step(*self.trainer.unpack(data))

    def run(self, x, y, sample_weight):
        """Runs `trainer.step(x, y, sample_weight)` and returns its logs."""
        return self.trainer.step(x, y, sample_weight)

    def shard(self, x, y, sample_weight):
        """This device's `Batch` of the step on the batch `x, y, sample_weight` (a context manager)."""
        return Batch(x, y, sample_weight)

    def forward_context(self, x):
        """The context of the step's forward passes on the batch `x`."""
        return contextlib.nullcontext()

    def gradients(self, loss_fn, variables):
        """`(gradients, aux)`: the gradients of `loss` with respect to `variables` (`None` for an unused
        one), where `loss, aux = loss_fn()` runs the training forwards. Called in `forward_context`
        (after the attack, whose forwards it must not record); the backward runs outside its autocast."""
        raise NotImplementedError(f"{type(self).__name__} must implement `gradients`.")

    def update_context(self):
        """The context of the optimizer update and `trainer.after_update`."""
        return contextlib.nullcontext()
