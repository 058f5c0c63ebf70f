"""Whole-step CUDA-graph capture for the torch fast path (`RPATTrainer(capture=True)`)."""

import torch

from keras_rpat.backend import torch_random

__all__ = ["CapturedStep"]


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
