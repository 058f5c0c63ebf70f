"""The torch fast path of `RPATTrainer` and of evaluation (imports torch).

`fast_runtime(trainer)` makes the trainer's `FastRuntime`, the engine of its
steps, or returns `None` when the fast path is off or the classifier cannot be
lowered (one log line names the reason). The runtime holds

- the trainer's models lowered into torch kernels (`lowering`): the
  classifier, the feature models of the perception proxies and the
  weight-averaged teacher, all over the trainer's own variables;
- the train step: the same trainer methods as the Keras path (attack, views,
  losses, metrics), fed the lowered models, with `torch.autograd.grad` for
  the weight gradients and no host synchronisation;
- optionally bf16 autocast (`precision="bfloat16"`), NHWC storage
  (`memory_format="channels_last"`) and whole-step CUDA-graph capture
  (`capture=True`), all off by default.

On a CPU, `capture=True` runs the same step uncaptured.
"""

import contextlib
import logging
import weakref

import keras
import torch

from keras_rpat.backend import torch_distributed
from keras_rpat.backend import torch_engine
from keras_rpat.fast_path import lowering
from keras_rpat.fast_path.capture import CapturedStep

logger = logging.getLogger("keras_rpat")


def fast_runtime(trainer):
    """A new `FastRuntime` for `trainer`, or `None` when the fast path is off or the classifier
    cannot be lowered (one log line names the reason)."""
    if not trainer.fast_path:
        return None
    try:
        return FastRuntime(trainer)
    except lowering.Unsupported as error:
        logger.warning(
            "keras_rpat: the torch fast path is off for %r (%s); training runs on the Keras "
            "path. Pass fast_path=False to silence this.",
            trainer.classifier.name,
            error,
        )
        return None


_INFERENCE = weakref.WeakKeyDictionary()


def inference_model(model, enabled=True):
    """`model` lowered for inference and attacks (evaluation), or `model` itself.

    Cached per model; a model that cannot be lowered is returned unchanged.
    """
    if not enabled or not isinstance(model, keras.Model):
        return model
    lowered = _INFERENCE.get(model)
    if lowered is None:
        try:
            lowered = lowering.lower(model)
            lowering.relayout_kernels(model)
        except lowering.Unsupported:
            lowered = model
        _INFERENCE[model] = lowered
    return lowered


class FastRuntime(torch_engine.TorchEngine):
    """The lowered models and the train step's engine of one trainer (see module doc)."""

    lowered = True

    def __init__(self, trainer):
        self.trainer = trainer
        fmt = trainer.memory_format
        self.classifier = lowering.lower(trainer.classifier, fmt)
        self.teacher = None if trainer.teacher is None else lowering.lower(trainer.teacher, fmt)
        self._features = {(): self.classifier}
        for model in (trainer.classifier, trainer.teacher):
            if model is not None:
                lowering.relayout_kernels(model, trainer)
        self._autocast_dtype = torch.bfloat16 if trainer.precision == "bfloat16" else None
        self._optimizer_laid_out = False
        self._step = CapturedStep(trainer.step, key=lambda: trainer.phase) if trainer.capture else trainer.step

    def features(self, proxies):
        """The lowered model returning logits and the given proxy features."""
        key = tuple(proxies)
        if key not in self._features:
            self._features[key] = lowering.lower(self.trainer.feature_model(key), self.trainer.memory_format)
        return self._features[key]

    def forward_context(self, x):
        """The context of the step's forwards: bf16 autocast when asked, one kernel view per step."""
        stack = contextlib.ExitStack()
        if self._autocast_dtype is not None:
            stack.enter_context(torch.autocast(device_type=x.device.type, dtype=self._autocast_dtype))
        stack.enter_context(lowering.shared_kernel_views())
        return stack

    def run(self, x, y, sample_weight):
        if not self._optimizer_laid_out:
            self._lay_out_optimizer()
        if torch_distributed.context() is not None:  # data-parallel: uncaptured
            return self.trainer.step(x, y, sample_weight)
        return self._step(x, y, sample_weight)

    def gradients(self, loss_fn, variables):
        loss, aux = loss_fn()
        values = [v.value for v in variables]
        if self._autocast_dtype is None:
            return list(torch.autograd.grad(loss, values, allow_unused=True)), aux
        with torch.autocast(device_type=loss.device.type, enabled=False):  # the backward runs outside autocast
            return list(torch.autograd.grad(loss, values, allow_unused=True)), aux

    def _lay_out_optimizer(self):
        """Gives each momentum buffer the storage layout of its variable.

        Element-wise updates over tensors of one layout are faster than over
        mixed layouts; the values are untouched.
        """
        optimizer = self.trainer.optimizer
        if not getattr(optimizer, "built", False):
            return
        self._optimizer_laid_out = True
        buffers = getattr(optimizer, "momentums", None) or []
        # The optimizer was built for the trainer's trainable variables, in their order.
        for variable, buffer in zip(self.trainer.trainable_variables, buffers):
            lowering.match_layout(buffer, variable)
