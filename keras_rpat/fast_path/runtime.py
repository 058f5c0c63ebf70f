"""The torch fast path of `RPATTrainer` and of evaluation (imports torch).

`runtime(trainer)` returns the trainer's `FastRuntime`, built on first use, or
`None` when the fast path is off or the classifier cannot be lowered (one log
line names the reason). The runtime holds

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
from keras_rpat.fast_path import lowering
from keras_rpat.fast_path.capture import CapturedStep

logger = logging.getLogger("keras_rpat")


def runtime(trainer):
    """The trainer's `FastRuntime`, or `None` when the Keras path runs."""
    state = getattr(trainer, "_fast_runtime", None)
    if state is None:
        state = False
        if trainer.fast_path:
            try:
                state = FastRuntime(trainer)
            except lowering.Unsupported as error:
                logger.warning(
                    "keras_rpat: the torch fast path is off for %r (%s); training runs on the Keras "
                    "path. Pass fast_path=False to silence this.",
                    trainer.classifier.name,
                    error,
                )
        trainer._fast_runtime = state
    return state or None


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


class FastRuntime:
    """The lowered models and the train step of one trainer (see module doc)."""

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
        self._step = CapturedStep(self._train_step, key=lambda: trainer._phase) if trainer.capture else self._train_step

    def features(self, proxies):
        """The lowered model returning logits and the given proxy features."""
        key = tuple(proxies)
        if key not in self._features:
            self._features[key] = lowering.lower(self.trainer._feature_model(key), self.trainer.memory_format)
        return self._features[key]

    def forward_context(self, device):
        """The context of the step's forwards: bf16 autocast when asked, one kernel view per step."""
        stack = contextlib.ExitStack()
        if self._autocast_dtype is not None:
            stack.enter_context(torch.autocast(device_type=device.type, dtype=self._autocast_dtype))
        stack.enter_context(lowering.shared_kernel_views())
        return stack

    def train_step(self, data):
        trainer = self.trainer
        x, y, sample_weight = trainer._unpack(data)
        if not self._optimizer_laid_out:
            self._lay_out_optimizer()
        if torch_distributed.context() is not None:  # data-parallel: the same step on this rank's rows
            return torch_distributed.train_step(
                trainer, x, y, sample_weight, _autograd_gradients, lambda: self.forward_context(x.device)
            )
        return self._step(x, y, sample_weight)

    def _train_step(self, x, y, sample_weight):
        trainer = self.trainer
        variables = trainer.trainable_weights
        with self.forward_context(x.device):
            x_adv, static_views = trainer._pre_gradient_views(x, y)
            total, terms, views = trainer._gradient_views_and_losses(x, y, x_adv, static_views, sample_weight)
            scaled = trainer.optimizer.scale_loss(total)
        grads = torch.autograd.grad(scaled, [v.value for v in variables], allow_unused=True)
        with torch.no_grad():
            trainer.optimizer.apply(list(grads), variables)
            with self.forward_context(x.device):
                trainer._after_update(x)
        return trainer._update_metrics(y, total, terms, views, sample_weight)

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
        variables = getattr(optimizer, "_trainable_variables", None) or []
        for variable, buffer in zip(variables, buffers):
            lowering.match_layout(buffer, variable)


def _autograd_gradients(loss, variables):
    return torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
