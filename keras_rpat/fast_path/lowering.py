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
type or option not listed in `_LOWERINGS`, a mixed-precision policy) raises
`Unsupported` with the reason; the trainer then keeps the Keras path.
"""

import contextlib
import threading

import keras
import torch
import torch.nn.functional as F

from keras_rpat import layers as rpat_layers
from keras_rpat.backend import torch_distributed


class Unsupported(Exception):
    """The model cannot be lowered exactly; `str(error)` says why."""


# Layout of a value in the lowered program: "keras" is the layout Keras
# itself would hold (NHWC for a channels_last 4-D tensor), "nchw" the torch
# layout. For tensors of rank < 4 and channels_first models the two agree.
KERAS, NCHW = "keras", "nchw"

# Policies whose layers compute in their variables' dtype (no autocasting).
_EXACT_POLICIES = ("float32", "float64")


_SHARED = threading.local()  # .views: {id(kernel variable): torch kernel} inside `shared_kernel_views`


@contextlib.contextmanager
def shared_kernel_views():
    """Inside, every lowered convolution reads one torch view per kernel.

    A train step runs several forwards over the same kernels. With a view per
    call, autograd sums a kernel's gradients through per-call permutes, in the
    Keras shape `(kh, kw, in, out)` with permuted strides, which is several
    times slower than summing them in the kernel's own `(out, in, kh, kw)`
    storage order; with one view per step it sums them there. The values are
    the same. Use it around forwards only: the views are dropped on exit, so
    no view outlives an in-place update of its variable.
    """
    outer = getattr(_SHARED, "views", None)
    _SHARED.views = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED.views = outer


def _kernel_view(kernel, channels_last):
    """`kernel` (a Keras `(kh, kw, in, out)` variable) as torch's `(out, in, kh, kw)`."""
    views = getattr(_SHARED, "views", None)
    key = (id(kernel), torch.is_grad_enabled())  # a view made under no_grad has no gradient path
    if views is not None and key in views:
        return views[key]
    w = kernel._value.permute(3, 2, 0, 1)
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    if views is not None:
        views[key] = w
    return w


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
        if hasattr(module, "_torch_params"):
            module._track_variables()


def match_layout(target, source):
    """Gives the variable `target` the storage strides of `source` (same shape)."""
    if tuple(target.shape) == tuple(source.shape):
        _restride(target, source._value.stride())


def _restride(variable, strides):
    """Re-stores a Keras torch variable with `strides`; its values are kept."""
    current = variable._value
    if current.stride() == tuple(strides):
        return False
    with torch.no_grad():
        data = torch.empty_strided(current.shape, strides, dtype=current.dtype, device=current.device)
        data.copy_(current)
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
        self._single_output = len(functional.outputs) == 1 and not isinstance(
            getattr(functional, "_outputs_struct", None), (list, tuple)
        )
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
            slot = self.emit("to_nchw", _make_to_nchw(self.memory_format), [src], NCHW, fresh=fresh)
        else:
            slot = self.emit("to_keras", _make_to_keras, [src], KERAS)
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
        lowering = _LOWERINGS.get(type(layer))
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


def _single_input(node):
    tensors = node.input_tensors
    if len(tensors) != 1:
        raise Unsupported(f"layer {node.operation.name!r} takes {len(tensors)} inputs")
    return tensors[0]


# ---------------------------------------------------------------------------
# Kernels. Each `_make_*` returns `fn(values, training)`.
# ---------------------------------------------------------------------------
def _make_to_nchw(memory_format):
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format

    def make(ins, out, in_place):
        (src,) = ins

        def fn(values, training):
            values[out] = values[src].permute(0, 3, 1, 2).contiguous(memory_format=fmt)

        return fn

    return make


def _make_to_keras(ins, out, in_place):
    (src,) = ins

    def fn(values, training):
        values[out] = values[src].permute(0, 2, 3, 1)

    return fn


def _alias(ins, out, in_place):
    (src,) = ins

    def fn(values, training):
        values[out] = values[src]

    return fn


def _lower_conv2d(planner, layer, node):
    groups = int(layer.groups)
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise Unsupported(f"Conv2D {layer.name!r} uses LoRA or quantization")
    activation = _activation(layer)
    layout = planner.spatial(layer)
    kh, kw = layer.kernel_size
    dilation = tuple(layer.dilation_rate)
    strides = tuple(layer.strides)
    src = _single_input(node)
    padding = (0, 0)
    if layer.padding == "same":
        if strides != (1, 1) or (kh % 2 == 0) or (kw % 2 == 0):
            raise Unsupported(f"Conv2D {layer.name!r}: 'same' padding with strides {strides} or an even kernel")
        padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    elif layer.padding != "valid":
        raise Unsupported(f"Conv2D {layer.name!r}: padding {layer.padding!r}")
    pad_node = planner.producer.get(id(src))
    if (
        padding == (0, 0)
        and pad_node is not None
        and type(pad_node.operation) is keras.layers.ZeroPadding2D
        and planner.consumers.get(id(src)) == 1
    ):
        (top, bottom), (left, right) = pad_node.operation.padding
        if top == bottom and left == right:
            # The padding becomes the convolution's (the same zeros).
            padding = (top, left)
            planner.spatial(pad_node.operation)
            src = _single_input(pad_node)
    x = planner.value(src, layout)
    kernel = layer.kernel
    bias = layer.bias if layer.use_bias else None
    channels_last = planner.memory_format == "channels_last"

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            w = _kernel_view(kernel, channels_last)
            y = F.conv2d(values[i], w, None if bias is None else bias._value, strides, padding, dilation, groups)
            values[out] = y if activation is None else activation(y)

        return fn

    return planner.emit("conv", make, [x], layout, fresh=activation is None)


def _activation(layer):
    activation = getattr(layer, "activation", None)
    if activation is None or activation is keras.activations.linear:
        return None
    if activation is keras.activations.relu:
        return torch.relu
    raise Unsupported(f"layer {layer.name!r} has the activation {getattr(activation, '__name__', activation)!r}")


def _lower_batch_norm(planner, layer, node):
    if layer.synchronized:
        raise Unsupported(f"BatchNorm {layer.name!r} is synchronized")
    src = _single_input(node)
    rank = len(src.shape)
    axis = layer.axis if layer.axis >= 0 else rank + layer.axis
    if rank == 4:
        channel_axis = 3 if planner.channels_last else 1
        if axis != channel_axis:
            raise Unsupported(f"BatchNorm {layer.name!r} normalises axis {layer.axis}, not the channel axis")
        layout = NCHW
    elif rank == 2 and axis == 1:
        layout = KERAS
    else:
        raise Unsupported(f"BatchNorm {layer.name!r} on a rank-{rank} tensor along axis {layer.axis}")
    x = planner.value(src, layout)
    gamma = layer.gamma if layer.scale else None
    beta = layer.beta if layer.center else None
    mean, variance = layer.moving_mean, layer.moving_variance
    momentum = 1.0 - layer.momentum  # torch's convention
    epsilon = layer.epsilon

    blocks = planner.blocks

    def normalize(h, train):
        g = None if gamma is None else gamma._value
        b = None if beta is None else beta._value
        if train and torch_distributed.synchronizing_batchnorm():
            return torch_distributed.sync_batch_norm(h, mean._value, variance._value, g, b, momentum, epsilon)
        if train and h.numel() == h.shape[1]:
            # One value per channel: torch refuses; the layer's formula
            # (zero variance, correction 1) applies.
            return _batch_norm_single(h, mean._value, variance._value, g, b, momentum, epsilon)
        return F.batch_norm(h, mean._value, variance._value, g, b, train, momentum, epsilon)

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            train = training and layer.trainable
            if train and blocks[0] is not None:  # statistics per block, in block order
                values[out] = torch.cat([normalize(h, True) for h in torch.split(values[i], blocks[0])])
            else:
                values[out] = normalize(values[i], train)

        return fn

    return planner.emit("bn", make, [x], layout, fresh=True)


def _batch_norm_single(h, mean, variance, gamma, beta, momentum, epsilon):
    shape = (1, -1) + (1,) * (h.dim() - 2)
    batch_mean = h.mean(dim=[d for d in range(h.dim()) if d != 1])
    centered = h - batch_mean.reshape(shape)
    batch_var = centered.square().mean(dim=[d for d in range(h.dim()) if d != 1])
    inv = torch.rsqrt(batch_var + epsilon)
    if gamma is not None:
        inv = inv * gamma
    y = centered * inv.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    with torch.no_grad():
        mean.copy_(mean * (1.0 - momentum) + batch_mean.detach() * momentum)
        variance.copy_(variance * (1.0 - momentum) + batch_var.detach() * momentum)
    return y


def _lower_relu(planner, layer, node):
    if layer.negative_slope or layer.max_value is not None or layer.threshold:
        raise Unsupported(f"ReLU {layer.name!r} with negative_slope, max_value or threshold")
    return _relu(planner, node)


def _relu(planner, node):
    src = _single_input(node)
    layout = planner.natural(src)
    x = planner.value(src, layout)

    def make(ins, out, in_place):
        (i,) = ins
        if in_place is not None:

            def fn(values, training):
                values[out] = values[i].relu_()

        else:

            def fn(values, training):
                values[out] = torch.relu(values[i])

        return fn

    return planner.emit("relu", make, [x], layout)


def _lower_activation(planner, layer, node):
    if _activation(layer) is None:
        return _lower_identity(planner, layer, node)
    return _relu(planner, node)


def _lower_add(planner, layer, node):
    tensors = node.input_tensors
    if len(tensors) < 2:
        raise Unsupported(f"Add {layer.name!r} with {len(tensors)} inputs")
    rank = len(tensors[0].shape)
    layout = NCHW if (rank == 4 and planner.channels_last) else KERAS
    xs = [planner.value(t, layout) for t in tensors]

    def make(ins, out, in_place):
        if in_place is not None and len(ins) == 2:
            target, other = ins[in_place], ins[1 - in_place]

            def fn(values, training):
                values[out] = values[target].add_(values[other])

        else:

            def fn(values, training):
                total = values[ins[0]] + values[ins[1]]
                for s in ins[2:]:
                    total = total + values[s]
                values[out] = total

        return fn

    return planner.emit("add", make, xs, layout, fresh=True)


def _lower_zero_padding(planner, layer, node):
    layout = planner.spatial(layer)
    (top, bottom), (left, right) = layer.padding
    x = planner.value(_single_input(node), layout)

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            values[out] = F.pad(values[i], (left, right, top, bottom))

        return fn

    return planner.emit("pad", make, [x], layout, fresh=True)


def _lower_global_average_pooling(planner, layer, node):
    layout = planner.spatial(layer)
    x = planner.value(_single_input(node), layout)
    keepdims = bool(layer.keepdims)
    out_layout = NCHW if keepdims else KERAS

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            values[out] = values[i].mean(dim=(2, 3), keepdim=keepdims)

        return fn

    return planner.emit("gap", make, [x], out_layout)


def _lower_pooling(planner, layer, node):
    if layer.padding != "valid":
        raise Unsupported(f"{type(layer).__name__} {layer.name!r} with padding {layer.padding!r}")
    layout = planner.spatial(layer)
    x = planner.value(_single_input(node), layout)
    pool = F.max_pool2d if isinstance(layer, keras.layers.MaxPooling2D) else F.avg_pool2d
    size, strides = tuple(layer.pool_size), tuple(layer.strides)

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            values[out] = pool(values[i], size, strides)

        return fn

    return planner.emit("pool", make, [x], layout)


def _lower_input_normalization(planner, layer, node):
    src = _single_input(node)
    rank = len(src.shape)
    layout = planner.natural(src) if rank == 4 else KERAS
    x = planner.value(src, layout)
    if rank == 4:
        axis = 1 if (layout == NCHW or not planner.channels_last) else 3
    else:
        axis = rank - 1
    shape = [1] * rank
    shape[axis] = -1
    constants = {}

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            h = values[i]
            if not h.is_floating_point():
                h = h.float()
            key = (h.device, h.dtype)
            if key not in constants:
                constants[key] = (
                    torch.tensor(layer.mean, dtype=h.dtype, device=h.device).reshape(shape),
                    torch.tensor(layer.std, dtype=h.dtype, device=h.device).reshape(shape),
                )
            m, s = constants[key]
            values[out] = (h - m) / s

        return fn

    return planner.emit("normalize", make, [x], layout)


def _lower_flatten(planner, layer, node):
    src = _single_input(node)
    x = planner.value(src, KERAS)
    channels_first = layer._channels_first and len(src.shape) > 2
    rank = len(src.shape)

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            h = values[i]
            if channels_first:
                h = h.permute(0, *range(2, rank), 1)
            values[out] = h.reshape(h.shape[0], -1)

        return fn

    return planner.emit("flatten", make, [x], KERAS)


def _lower_reshape(planner, layer, node):
    src = _single_input(node)
    flatten = planner.producer.get(id(src))
    if flatten is not None and type(flatten.operation) is keras.layers.Flatten:
        original = _single_input(flatten)
        pure = not (flatten.operation._channels_first and len(original.shape) > 2)
        if pure and tuple(original.shape[1:]) == tuple(node.outputs[0].shape[1:]):
            # Reshape(Flatten(t)) == t: keep `t` in the layout it has.
            layout = planner.natural(original)
            return planner.value(original, layout)
    x = planner.value(src, KERAS)
    target = tuple(-1 if d is None else d for d in node.outputs[0].shape[1:])

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            h = values[i]
            values[out] = h.reshape((h.shape[0],) + target)

        return fn

    return planner.emit("reshape", make, [x], KERAS)


def _lower_dense(planner, layer, node):
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise Unsupported(f"Dense {layer.name!r} uses LoRA or quantization")
    activation = _activation(layer)
    src = _single_input(node)
    x = planner.value(src, KERAS)
    kernel = layer.kernel
    bias = layer.bias if layer.use_bias else None
    two_d = len(src.shape) == 2

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            h = values[i]
            if bias is not None and two_d:
                y = torch.addmm(bias._value, h, kernel._value)
            else:
                y = torch.matmul(h, kernel._value)
                if bias is not None:
                    y = y + bias._value
            values[out] = y if activation is None else activation(y)

        return fn

    return planner.emit("dense", make, [x], KERAS)


def _lower_dropout(planner, layer, node):
    if layer.rate:
        raise Unsupported(f"Dropout {layer.name!r} with rate {layer.rate} (its random mask is Keras')")
    return _lower_identity(planner, layer, node)


def _lower_identity(planner, layer, node):
    src = _single_input(node)
    layout = planner.natural(src)
    return planner.emit("alias", _alias, [planner.value(src, layout)], layout)


_LOWERINGS = {
    keras.layers.Conv2D: _lower_conv2d,
    rpat_layers.BatchNorm: _lower_batch_norm,
    keras.layers.ReLU: _lower_relu,
    keras.layers.Activation: _lower_activation,
    keras.layers.Add: _lower_add,
    keras.layers.ZeroPadding2D: _lower_zero_padding,
    keras.layers.GlobalAveragePooling2D: _lower_global_average_pooling,
    keras.layers.MaxPooling2D: _lower_pooling,
    keras.layers.AveragePooling2D: _lower_pooling,
    rpat_layers.InputNormalization: _lower_input_normalization,
    keras.layers.Flatten: _lower_flatten,
    keras.layers.Reshape: _lower_reshape,
    keras.layers.Dense: _lower_dense,
    keras.layers.Dropout: _lower_dropout,
    keras.layers.Identity: _lower_identity,
}
