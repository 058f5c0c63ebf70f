"""The torch fast path of `RPATTrainer`.

`runtime(trainer)` returns the trainer's `FastRuntime`, built on first use, or
`None` when the fast path is off or the classifier cannot be lowered (one log
line names the reason). The runtime holds

- the trainer's models lowered into torch kernels (`torch_lowering`): the
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
from keras_rpat.backend import torch_lowering
from keras_rpat.backend import torch_random

logger = logging.getLogger("keras_rpat")


def runtime(trainer):
    """The trainer's `FastRuntime` (its engine), or `None` when the Keras path runs."""
    engine = trainer.engine
    return engine if engine.lowered else None


def fast_runtime(trainer):
    """A new `FastRuntime` for `trainer`, or `None` when the fast path is off or the classifier
    cannot be lowered (one log line names the reason)."""
    if not trainer.fast_path:
        return None
    try:
        return FastRuntime(trainer)
    except torch_lowering.Unsupported as error:
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
            lowered = torch_lowering.lower(model)
            torch_lowering.relayout_kernels(model)
        except torch_lowering.Unsupported:
            lowered = model
        _INFERENCE[model] = lowered
    return lowered


class FastRuntime(torch_engine.TorchEngine):
    """The lowered models and the train step's engine of one trainer (see module doc)."""

    lowered = True

    def __init__(self, trainer):
        self.trainer = trainer
        fmt = trainer.memory_format
        self.classifier = torch_lowering.lower(trainer.classifier, fmt)
        self.teacher = None if trainer.teacher is None else torch_lowering.lower(trainer.teacher, fmt)
        self._features = {(): self.classifier}
        for model in (trainer.classifier, trainer.teacher):
            if model is not None:
                torch_lowering.relayout_kernels(model, trainer)
        self._autocast_dtype = torch.bfloat16 if trainer.precision == "bfloat16" else None
        self._optimizer_laid_out = False
        self._step = CapturedStep(self._train_step, key=lambda: trainer.phase) if trainer.capture else self._train_step

    def features(self, proxies):
        """The lowered model returning logits and the given proxy features."""
        key = tuple(proxies)
        if key not in self._features:
            self._features[key] = torch_lowering.lower(self.trainer.feature_model(key), self.trainer.memory_format)
        return self._features[key]

    def forward_context(self, x):
        """The context of the step's forwards: bf16 autocast when asked, one kernel view per step."""
        stack = contextlib.ExitStack()
        if self._autocast_dtype is not None:
            stack.enter_context(torch.autocast(device_type=x.device.type, dtype=self._autocast_dtype))
        stack.enter_context(torch_lowering.shared_kernel_views())
        return stack

    def run(self, x, y, sample_weight):
        if not self._optimizer_laid_out:
            self._lay_out_optimizer()
        if torch_distributed.context() is not None:  # data-parallel: uncaptured
            return self.trainer.step(x, y, sample_weight)
        return self._step(x, y, sample_weight)

    def _train_step(self, x, y, sample_weight):
        return self.trainer.step(x, y, sample_weight)

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
        variables = getattr(optimizer, "_trainable_variables", None) or []
        for variable, buffer in zip(variables, buffers):
            torch_lowering.match_layout(buffer, variable)


class CapturedStep:
    """Replays a step as one CUDA graph per batch shape and phase.

    The first `warmup` calls of each shape run eagerly on a side stream (as
    CUDA-graph capture requires); the next call captures the step and
    replays it, so every batch is trained on exactly once. The last partial
    batch of an epoch gets its own graph (a second shape); nothing is padded.
    Tensors off CUDA run the step uncaptured.

    Args:
        step: `step(*tensors) -> outputs` without host synchronisation.
        key: returns the hashable state the step depends on besides shapes
            (the trainer's phase: a new phase captures anew).
        warmup: eager calls before capture.
    """

    def __init__(self, step, key=lambda: None, warmup=2):
        self.step = step
        self.key = key
        self.warmup = warmup
        self.graphs = {}
        self.calls = {}

    def __call__(self, *tensors):
        if not tensors[0].is_cuda:
            return self.step(*tensors)
        key = (self.key(),) + tuple(None if t is None else (tuple(t.shape), t.dtype) for t in tensors)
        entry = self.graphs.get(key)
        if entry is None:
            calls = self.calls.get(key, 0)
            if calls < self.warmup:
                self.calls[key] = calls + 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    outputs = self.step(*tensors)
                torch.cuda.current_stream().wait_stream(side)
                return outputs
            entry = self.graphs[key] = self._capture(tensors)
        graph, static_inputs, static_outputs = entry
        for static, tensor in zip(static_inputs, tensors):
            if static is not None:
                static.copy_(tensor)
        graph.replay()
        return static_outputs

    def _capture(self, tensors):
        static_inputs = [None if t is None else t.clone() for t in tensors]
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            for generator in torch_random.device_generators("cuda"):
                graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            static_outputs = self.step(*static_inputs)
        return graph, static_inputs, static_outputs
