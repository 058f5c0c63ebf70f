"""The torch kernels of the fast path, one lowering per Keras layer type (see `lowering`).

`LOWERINGS` maps a layer type to `lowering(planner, layer, node)`, which plans
the layer's kernel with the methods of `lowering`'s planner (`value`,
`natural`, `emit`, `spatial`) and returns its output slot, or raises `Unsupported` when
the layer's options cannot be reproduced exactly. Each planned kernel is made
by `make(inputs, output, in_place)` and runs as `fn(values, training)`.
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
    w = kernel.value.permute(3, 2, 0, 1)
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    if views is not None:
        views[key] = w
    return w


def single_input(node):
    """The one input tensor of a graph node; raises `Unsupported` for several."""
    tensors = node.input_tensors
    if len(tensors) != 1:
        raise Unsupported(f"layer {node.operation.name!r} takes {len(tensors)} inputs")
    return tensors[0]


# ---------------------------------------------------------------------------
# Kernels. Each `make(ins, out, in_place)` returns `fn(values, training)`.
# ---------------------------------------------------------------------------
def to_nchw_kernel(memory_format):
    """The `make` of a Keras-layout (NHWC) to NCHW transpose stored in `memory_format`."""
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format

    def make(ins, out, in_place):
        (src,) = ins

        def fn(values, training):
            values[out] = values[src].permute(0, 3, 1, 2).contiguous(memory_format=fmt)

        return fn

    return make


def to_keras_kernel(ins, out, in_place):
    """The `make` of an NCHW to Keras-layout (NHWC) view."""
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
    src = single_input(node)
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
            src = single_input(pad_node)
    x = planner.value(src, layout)
    kernel = layer.kernel
    bias = layer.bias if layer.use_bias else None
    channels_last = planner.memory_format == "channels_last"

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            w = _kernel_view(kernel, channels_last)
            y = F.conv2d(values[i], w, None if bias is None else bias.value, strides, padding, dilation, groups)
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
    src = single_input(node)
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
        g = None if gamma is None else gamma.value
        b = None if beta is None else beta.value
        if train and torch_distributed.synchronizing_batchnorm():
            return torch_distributed.sync_batch_norm(h, mean.value, variance.value, g, b, momentum, epsilon)
        if train and h.numel() == h.shape[1]:
            # One value per channel: torch refuses; the layer's formula
            # (zero variance, correction 1) applies.
            return _batch_norm_single(h, mean.value, variance.value, g, b, momentum, epsilon)
        return F.batch_norm(h, mean.value, variance.value, g, b, train, momentum, epsilon)

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
    src = single_input(node)
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
    x = planner.value(single_input(node), layout)

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            values[out] = F.pad(values[i], (left, right, top, bottom))

        return fn

    return planner.emit("pad", make, [x], layout, fresh=True)


def _lower_global_average_pooling(planner, layer, node):
    layout = planner.spatial(layer)
    x = planner.value(single_input(node), layout)
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
    x = planner.value(single_input(node), layout)
    pool = F.max_pool2d if isinstance(layer, keras.layers.MaxPooling2D) else F.avg_pool2d
    size, strides = tuple(layer.pool_size), tuple(layer.strides)

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            values[out] = pool(values[i], size, strides)

        return fn

    return planner.emit("pool", make, [x], layout)


def _lower_input_normalization(planner, layer, node):
    src = single_input(node)
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
    src = single_input(node)
    x = planner.value(src, KERAS)
    channels_first = layer.data_format == "channels_first" and len(src.shape) > 2
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
    src = single_input(node)
    flatten = planner.producer.get(id(src))
    if flatten is not None and type(flatten.operation) is keras.layers.Flatten:
        original = single_input(flatten)
        pure = not (flatten.operation.data_format == "channels_first" and len(original.shape) > 2)
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
    src = single_input(node)
    x = planner.value(src, KERAS)
    kernel = layer.kernel
    bias = layer.bias if layer.use_bias else None
    two_d = len(src.shape) == 2

    def make(ins, out, in_place):
        (i,) = ins

        def fn(values, training):
            h = values[i]
            if bias is not None and two_d:
                y = torch.addmm(bias.value, h, kernel.value)
            else:
                y = torch.matmul(h, kernel.value)
                if bias is not None:
                    y = y + bias.value
            values[out] = y if activation is None else activation(y)

        return fn

    return planner.emit("dense", make, [x], KERAS)


def _lower_dropout(planner, layer, node):
    if layer.rate:
        raise Unsupported(f"Dropout {layer.name!r} with rate {layer.rate} (its random mask is Keras')")
    return _lower_identity(planner, layer, node)


def _lower_identity(planner, layer, node):
    src = single_input(node)
    layout = planner.natural(src)
    return planner.emit("alias", _alias, [planner.value(src, layout)], layout)


LOWERINGS = {
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
