"""A functional Keras classifier lowered into torch-native kernels.

`lower(model)` reads the graph of a functional Keras model once and returns a
`LoweredModel`: a callable with the model's signature (`lowered(x,
training=...)`) that computes the same function over **the very same
variables** with torch-native kernels. Nothing is copied: the Keras model,
its `.keras` saving, callbacks and the tensorflow backend are untouched, and
an update of the variables is seen by both.

What the lowering changes, all exact (the same arithmetic, fewer and cheaper
kernels):

- activations are NCHW from the first spatial layer on, so a channels_last
  model pays one input transpose per forward instead of two permutes and
  copies around every convolution;
- convolution kernels stay Keras variables of shape `(kh, kw, in, out)`, but
  their storage is re-laid so that `kernel.permute(3, 2, 0, 1)` (torch's
  `(out, in, kh, kw)`) is contiguous: no kernel relayout per call, and the
  gradient arrives in the same layout (`relayout_kernels`);
- `keras_rpat.layers.BatchNorm` is one fused `F.batch_norm` (its semantics
  are torch's: momentum, epsilon, unbiased running variance);
- a symmetric `ZeroPadding2D` that only feeds a convolution becomes that
  convolution's padding; a `Reshape` that undoes a `Flatten` is dropped;
- ReLU and Add write into a fresh tensor that nothing else reads;
- only the layers the requested outputs depend on run;
- `forward_many(xs)` runs several batches (a train step's views) as one,
  with per-batch BatchNorm statistics, and `shared_kernel_views()` gives each
  kernel one torch view for the forwards of a step.

A model the lowering cannot reproduce exactly (a subclassed model, a layer
type or option not in `kernels.LOWERINGS`, a mixed-precision policy) raises
`Unsupported` with the reason; the trainer then keeps the Keras path.
The per-layer kernels live in `keras_rpat.fast_path.kernels`.
"""

import keras
import torch

from keras_rpat.fast_path.kernels import KERAS
from keras_rpat.fast_path.kernels import LOWERINGS
from keras_rpat.fast_path.kernels import NCHW
from keras_rpat.fast_path.kernels import Unsupported
from keras_rpat.fast_path.kernels import shared_kernel_views
from keras_rpat.fast_path.kernels import to_keras_kernel
from keras_rpat.fast_path.kernels import to_nchw_kernel

__all__ = ["LoweredModel", "Unsupported", "lower", "match_layout", "relayout_kernels", "retrack", "shared_kernel_views"]

# Policies whose layers compute in their variables' dtype (no autocasting).
_EXACT_POLICIES = ("float32", "float64")


def relayout_kernels(model, *owners):
    """Stores every `Conv2D` kernel so that its torch view is contiguous.

    The Keras variable keeps its shape `(kh, kw, in, out)` and its values;
    only the strides of its storage change (`(out, in, kh, kw)` memory
    order). Keras' own convolution then needs no copy either. Every
    `nn.Module` view of the variables (the model, its layers and `owners`,
    e.g. the trainer wrapping the model) is refreshed. Idempotent.
    """
    changed = False
    for layer in _all_layers(model):
        if type(layer) is keras.layers.Conv2D and layer.built:
            kh, kw, cin, cout = layer.kernel.shape
            # Strides of a contiguous (out, in, kh, kw) tensor, seen as (kh, kw, in, out).
            changed |= _restride(layer.kernel, (kw, 1, kh * kw, cin * kh * kw))
    if changed:
        retrack(model, *owners)


def retrack(model, *owners):
    """Refreshes the `nn.Module` parameter views after variables were re-stored."""
    for module in [*_all_layers(model), model, *owners]:
        if isinstance(module, keras.Layer):
            module.torch_params.update({variable.path: variable.value for variable in module.variables})


def match_layout(target, source):
    """Gives the variable `target` the storage strides of `source` (same shape)."""
    if tuple(target.shape) == tuple(source.shape):
        _restride(target, source.value.stride())


def _restride(variable, strides):
    """Re-stores a Keras torch variable with `strides`; its values are kept."""
    current = variable.value
    if current.stride() == tuple(strides):
        return False
    with torch.no_grad():
        data = torch.empty_strided(current.shape, strides, dtype=current.dtype, device=current.device)
        data.copy_(current)
    # Private Keras: no public way re-stores a variable (`assign` copies into the old storage); tests/test_keras_pins.py.
    variable._value = torch.nn.Parameter(data, requires_grad=current.requires_grad)
    return True


def _all_layers(model):
    seen = set()
    todo = list(getattr(model, "layers", []))
    while todo:
        layer = todo.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        todo.extend(getattr(layer, "layers", []))


class LoweredModel:
    """`model(x, training=...)` as a straight list of torch kernels.

    Args:
        model: a built functional `keras.Model` (a built `keras.Sequential`
            is lowered through its functional graph).
        memory_format: `"contiguous"` (NCHW, default) or `"channels_last"`
            (NHWC storage of the NCHW tensors: faster on recent GPUs, slower
            on CPUs). Convolution kernels are relaid per call in that case.
    """

    def __init__(self, model, memory_format="contiguous"):
        if memory_format not in ("contiguous", "channels_last"):
            raise ValueError(
                f"`memory_format` must be 'contiguous' or 'channels_last'. Received: memory_format={memory_format!r}"
            )
        self.name = model.name
        self.dtype = model.dtype  # the variables' dtype, as `keras.Model.dtype`
        self.memory_format = memory_format
        functional = _functional(model)
        # Row counts of the blocks of a `forward_many` batch (read by BatchNorm), else None.
        self._blocks = [None]
        planner = _Planner(functional, memory_format, self._blocks)
        self._program, self._input_slot, self._output_slots, self._num_slots = planner.plan()
        self._single_output = len(functional.outputs) == 1 and not isinstance(functional.output, (list, tuple))
        # Keras casts inputs to the dtype of the model's `Input` first.
        self._input_dtype = getattr(torch, keras.backend.standardize_dtype(functional.inputs[0].dtype))

    def __call__(self, x, training=False):
        values = [None] * self._num_slots
        values[self._input_slot] = x.to(self._input_dtype)
        training = bool(training)
        for op in self._program:
            op(values, training)
        outputs = [values[s] for s in self._output_slots]
        return outputs[0] if self._single_output else outputs

    def forward_many(self, xs, training=False):
        """`[self(x, training) for x in xs]`, as one forward of the concatenated batch.

        Training-mode BatchNorm normalises each block of rows with the
        block's own statistics and updates its moving statistics block after
        block, exactly as the separate calls would; every other lowered layer
        treats rows independently. One forward of `len(xs)` blocks runs each
        convolution once, with one weight gradient in the backward pass,
        instead of once per block: much faster for small batches, where the
        cost of a convolution is in its weights. Convolutions of a larger
        batch may round differently (float32 rounding, not semantics).
        """
        if len(xs) == 1:
            return [self(xs[0], training)]
        sizes = [int(x.shape[0]) for x in xs]
        self._blocks[0] = sizes
        try:
            outputs = self(torch.cat([x.to(self._input_dtype) for x in xs]), training)
        finally:
            self._blocks[0] = None
        if self._single_output:
            return list(torch.split(outputs, sizes))
        parts = [torch.split(o, sizes) for o in outputs]
        return [[p[i] for p in parts] for i in range(len(xs))]


def lower(model, memory_format="contiguous"):
    """Returns a `LoweredModel` of `model`; raises `Unsupported` with the reason."""
    return LoweredModel(model, memory_format)


def _functional(model):
    # Private Keras: no public way reaches the graph's nodes (`_nodes_by_depth`) or a Sequential's functional
    # model (`_functional`); tests/test_keras_pins.py.
    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise Unsupported(f"the Sequential model {model.name!r} is not built")
        return inner
    if (
        not isinstance(model, keras.Model)
        or not hasattr(model, "_nodes_by_depth")
        or not getattr(model, "inputs", None)
    ):
        raise Unsupported(f"{type(model).__name__} {getattr(model, 'name', '')!r} is not a functional model")
    if len(model.inputs) != 1:
        raise Unsupported(f"the model has {len(model.inputs)} inputs (one image input is lowered)")
    return model


class _Step:
    """One planned kernel. `make(inputs, output, in_place)` returns
    `fn(values, training)`, which reads the input slots and writes the output."""

    __slots__ = ("kind", "make", "inputs", "output", "fresh")

    def __init__(self, kind, make, inputs, output, fresh):
        self.kind = kind  # "relu" and "add" may run in place (see _Planner.plan)
        self.make = make
        self.inputs = inputs
        self.output = output
        self.fresh = fresh  # a new tensor whose value no backward pass needs


class _Planner:
    """Plans the kernels of a functional model, on demand from its outputs."""

    def __init__(self, model, memory_format, blocks):
        self.model = model
        self.memory_format = memory_format
        self.blocks = blocks  # the LoweredModel's block sizes holder (see forward_many)
        self.steps = []
        self.slots = {}  # (id(keras_tensor), layout) -> slot
        self.layout = {}  # slot -> layout
        self.num_slots = 0
        self.producer = {}  # id(keras_tensor) -> node
        self.consumers = {}  # id(keras_tensor) -> consuming nodes, +1 if a model output
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                for t in node.outputs:
                    self.producer[id(t)] = node
                for t in node.input_tensors:
                    self.consumers[id(t)] = self.consumers.get(id(t), 0) + 1
        for t in model.outputs:
            self.consumers[id(t)] = self.consumers.get(id(t), 0) + 1
        self.input = model.inputs[0]
        self.data_format = _model_data_format(model)
        self.channels_last = self.data_format == "channels_last" and len(self.input.shape) == 4

    def emit(self, kind, make, inputs, layout, fresh=False):
        out = self.num_slots
        self.num_slots += 1
        self.layout[out] = layout
        self.steps.append(_Step(kind, make, list(inputs), out, fresh))
        return out

    def plan(self):
        x_slot = self.num_slots
        self.num_slots += 1
        self.layout[x_slot] = KERAS
        self.slots[(id(self.input), KERAS)] = x_slot
        if not self.channels_last:
            self.slots[(id(self.input), NCHW)] = x_slot
        outputs = [self.value(t, KERAS) for t in self.model.outputs]
        uses = {}
        for step in self.steps:
            for s in step.inputs:
                uses[s] = uses.get(s, 0) + 1
        protected = set(outputs) | {x_slot}
        fresh = {step.output for step in self.steps if step.fresh}
        program = []
        for step in self.steps:
            in_place = None
            if step.kind in ("relu", "add"):
                # Write into an operand that is a new tensor, read only here
                # and saved by no backward (conv, BN and add keep their
                # inputs for backward, not their outputs; ReLU keeps its
                # output, so a ReLU output is never overwritten).
                for i, s in enumerate(step.inputs):
                    if s in fresh and uses.get(s) == 1 and s not in protected:
                        in_place = i
                        break
                if in_place is not None and step.kind == "add":
                    fresh.add(step.output)
            program.append(step.make(step.inputs, step.output, in_place))
        return program, x_slot, outputs, self.num_slots

    def value(self, tensor, layout):
        """The slot holding `tensor` in `layout`, planning its producer on demand."""
        key = (id(tensor), layout)
        if key in self.slots:
            return self.slots[key]
        have = self.natural(tensor)
        if key in self.slots:  # produced in this layout
            return self.slots[key]
        src = self.slots[(id(tensor), have)]
        if layout == NCHW:
            fresh = self.memory_format == "contiguous"  # else the permute may be a view of the input
            slot = self.emit("to_nchw", to_nchw_kernel(self.memory_format), [src], NCHW, fresh=fresh)
        else:
            slot = self.emit("to_keras", to_keras_kernel, [src], KERAS)
        self.slots[key] = slot
        return slot

    def natural(self, tensor):
        """The layout `tensor` is produced in, planning its producer if needed."""
        for layout in (NCHW, KERAS):
            if (id(tensor), layout) in self.slots:
                return layout
        slot = self.produce(tensor)
        layout = self.layout[slot]
        self.slots[(id(tensor), layout)] = slot
        if len(tensor.shape) != 4 or not self.channels_last:
            # Both layouts are the same tensor.
            self.slots[(id(tensor), NCHW if layout == KERAS else KERAS)] = slot
        return layout

    def produce(self, tensor):
        node = self.producer.get(id(tensor))
        if node is None:
            raise Unsupported("the model's graph has a tensor with no producing layer")
        layer = node.operation
        kwargs = sorted(k for k, v in node.arguments.kwargs.items() if v is not None)
        if kwargs:
            raise Unsupported(f"layer {layer.name!r} is called with the keyword arguments {kwargs}")
        if len(node.outputs) != 1:
            raise Unsupported(f"layer {layer.name!r} has {len(node.outputs)} outputs")
        lowering = LOWERINGS.get(type(layer))
        if lowering is None:
            raise Unsupported(f"layer {layer.name!r} of type {type(layer).__name__} has no torch lowering")
        policy = getattr(getattr(layer, "dtype_policy", None), "name", "float32")
        if policy not in _EXACT_POLICIES:
            raise Unsupported(
                f"layer {layer.name!r} uses the dtype policy {policy!r} (use precision='bfloat16' instead)"
            )
        return lowering(self, layer, node)

    def spatial(self, layer):
        """The layout a layer with a `data_format` reads and writes (NCHW)."""
        fmt = getattr(layer, "data_format", self.data_format)
        if fmt != self.data_format:
            raise Unsupported(f"layer {layer.name!r} is {fmt} in a {self.data_format} model")
        return NCHW


def _model_data_format(model):
    formats = {
        getattr(layer, "data_format", None)
        for layer in _all_layers(model)
        if getattr(layer, "data_format", None) in ("channels_last", "channels_first")
        and not isinstance(layer, keras.layers.Flatten)  # Flatten's only says how to order
    }
    if len(formats) > 1:
        raise Unsupported(f"the model mixes data formats {sorted(formats)}")
    return formats.pop() if formats else keras.config.image_data_format()
