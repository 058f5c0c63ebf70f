"""Image classifiers of the RPAT paper, as functional Keras models.

Every builder returns a `keras.Model` that maps images (pixels in `[0, 1]`)
to logits (no softmax) and contains three named layers used by RPAT:

- `"logits"`: the final `Dense` layer.
- `"penultimate"`: the pooled feature vector entering `"logits"` (the
  second-to-last-layer perception proxy of the paper's Table 5).
- `"third_to_last"`: the flattened output of the stage before the last one
  (`layer3` for ResNets, `block2` for WideResNets), the third-to-last-layer
  proxy. To keep it inside the model graph it sits on the main path as
  `Flatten` followed by a `Reshape` back to the map (both free views).

Other layer names follow the reference PyTorch module paths with `.`
replaced by `_` (`layer1_0_conv1`, `layer1_0_shortcut_0`,
`block1_layer_0_convShortcut`, ...), so a PyTorch `state_dict` maps onto the
Keras layers by name.

Porting details (REFERENCE.md section 5 and the porting checklist): all
convolutions are bias-free; 3x3 convolutions with stride 2 use symmetric
zero padding (`ZeroPadding2D(1)` + `"valid"`), as PyTorch does; batch
normalization is `keras_rpat.layers.BatchNorm` (PyTorch semantics); weights
use PyTorch's default initialisers (WideResNet convolutions: Kaiming-normal,
fan-out; WideResNet classifier bias: zeros).
"""

import numbers
import os

import keras
import numpy as np

from keras_rpat import _checks
from keras_rpat import layers as rpat_layers
from keras_rpat._names import MODEL_NAMES
from keras_rpat._names import canonical_model_name as canonical_name
from keras_rpat._names import list_models

__all__ = [
    "get",
    "list_models",
    "canonical_name",
    "feature_model",
    "resnet18",
    "resnet18_bottleneck",
    "preact_resnet18",
    "wide_resnet",
    "wide_resnet34_10",
    "wide_resnet28_10",
    "small_cnn",
    "from_torch",
    "load_torch_weights",
    "torch_state_dict",
]

_PAPER = 'Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry", ICCV 2025.'


# ----------------------------------------------------------------------------
# Argument handling
# ----------------------------------------------------------------------------


def _resolve_normalize(normalize):
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize.lower().replace("-", "").replace("_", "") == "cifar10":
            return rpat_layers.CIFAR10_MEAN, rpat_layers.CIFAR10_STD
        raise ValueError(
            f'`normalize` must be None, "cifar10" or a `(mean, std)` pair. Received: normalize={normalize!r}'
        )
    if isinstance(normalize, dict) and set(normalize) == {"mean", "std"}:
        return normalize["mean"], normalize["std"]
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        return normalize[0], normalize[1]
    raise ValueError(f'`normalize` must be None, "cifar10" or a `(mean, std)` pair. Received: normalize={normalize!r}')


class _Config:
    """What every layer of one model needs to know."""

    def __init__(
        self,
        num_classes,
        input_shape,
        data_format,
        stem_stride,
        normalize,
        kernel_initializer="torch",
    ):
        self.num_classes = _checks.check_num_classes(num_classes)
        self.stem_stride = _checks.check_positive_int(stem_stride, "stem_stride")
        self.data_format = rpat_layers.standardize_data_format(data_format)
        self.channel_axis = -1 if self.data_format == "channels_last" else 1
        if input_shape is None:
            input_shape = (32, 32, 3) if self.data_format == "channels_last" else (3, 32, 32)
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or any(
            isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in input_shape
        ):
            raise ValueError(
                "`input_shape` must be a tuple of 3 positive integers "
                "(height, width, channels) for channels_last or (channels, "
                "height, width) for channels_first. "
                f"Received: input_shape={input_shape}"
            )
        self.input_shape = tuple(int(d) for d in input_shape)
        self._check_channels()
        self.normalize = _resolve_normalize(normalize)
        self.kernel_initializer = kernel_initializer

    def _check_channels(self):
        shape = self.input_shape
        if self.data_format == "channels_last":
            channels, other, swapped, moved = shape[-1], shape[0], "channels_first", shape[1:] + shape[:1]
        else:
            channels, other, swapped, moved = shape[0], shape[-1], "channels_last", shape[-1:] + shape[:-1]
        if channels in (1, 3):
            return
        hint = " keras_rpat's images have 1 (grey) or 3 (RGB) channels."
        if other in (1, 3):
            hint = f" It looks {swapped}: pass data_format={swapped!r}, or input_shape={moved}."
        raise ValueError(
            f"`input_shape` gives {channels} channels in the {self.data_format} layout, but the images "
            f"must have 1 or 3. Received: input_shape={shape}.{hint}"
        )

    # -- layers ---------------------------------------------------------

    def kernel_init(self):
        if self.kernel_initializer == "kaiming_fan_out":
            return rpat_layers.kaiming_normal_fan_out()
        return rpat_layers.torch_kernel_initializer()

    def inputs(self):
        inputs = keras.Input(shape=self.input_shape, name="images")
        x = inputs
        if self.normalize is not None:
            mean, std = self.normalize
            x = rpat_layers.InputNormalization(
                mean=mean,
                std=std,
                data_format=self.data_format,
                name="input_normalization",
            )(x)
        return inputs, x

    def conv(self, x, filters, kernel_size, strides, name):
        if kernel_size > 1 and strides > 1:
            # PyTorch pads symmetrically; Keras "same" would pad (0, 1).
            x = keras.layers.ZeroPadding2D(kernel_size // 2, data_format=self.data_format, name=name + "_pad")(x)
            padding = "valid"
        else:
            padding = "same" if kernel_size > 1 else "valid"
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            data_format=self.data_format,
            kernel_initializer=self.kernel_init(),
            name=name,
        )(x)

    def bn(self, x, name):
        return rpat_layers.BatchNorm(axis=self.channel_axis, name=name)(x)

    def relu(self, x, name):
        return keras.layers.ReLU(name=name)(x)

    def third_to_last(self, x):
        """Flattened stage output, kept on the main path (see module doc)."""
        shape = tuple(x.shape[1:])
        # Flatten without the channels_first transpose: a pure view.
        flat = keras.layers.Flatten(data_format="channels_last", name="third_to_last")(x)
        return keras.layers.Reshape(shape, name="third_to_last_reshape")(flat)

    def head(self, x, inputs, name, bias_initializer=None):
        features = keras.layers.GlobalAveragePooling2D(data_format=self.data_format, name="penultimate")(x)
        fan_in = int(features.shape[-1])
        if bias_initializer is None:
            bias_initializer = rpat_layers.TorchBiasUniform(fan_in)
        logits = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=rpat_layers.torch_kernel_initializer(),
            bias_initializer=bias_initializer,
            name="logits",
        )(features)
        return keras.Model(inputs, logits, name=name)


# ----------------------------------------------------------------------------
# Blocks (names follow the reference PyTorch modules)
# ----------------------------------------------------------------------------


def _basic_block(cfg, x, in_planes, planes, stride, prefix):
    out = cfg.conv(x, planes, 3, stride, prefix + "_conv1")
    out = cfg.relu(cfg.bn(out, prefix + "_bn1"), prefix + "_relu1")
    out = cfg.conv(out, planes, 3, 1, prefix + "_conv2")
    out = cfg.bn(out, prefix + "_bn2")
    shortcut = x
    if stride != 1 or in_planes != planes:
        shortcut = cfg.conv(x, planes, 1, stride, prefix + "_shortcut_0")
        shortcut = cfg.bn(shortcut, prefix + "_shortcut_1")
    out = keras.layers.Add(name=prefix + "_add")([out, shortcut])
    return cfg.relu(out, prefix + "_out"), planes


def _bottleneck_block(cfg, x, in_planes, planes, stride, prefix):
    expanded = 4 * planes
    out = cfg.conv(x, planes, 1, 1, prefix + "_conv1")
    out = cfg.relu(cfg.bn(out, prefix + "_bn1"), prefix + "_relu1")
    out = cfg.conv(out, planes, 3, stride, prefix + "_conv2")
    out = cfg.relu(cfg.bn(out, prefix + "_bn2"), prefix + "_relu2")
    out = cfg.conv(out, expanded, 1, 1, prefix + "_conv3")
    out = cfg.bn(out, prefix + "_bn3")
    shortcut = x
    if stride != 1 or in_planes != expanded:
        shortcut = cfg.conv(x, expanded, 1, stride, prefix + "_shortcut_0")
        shortcut = cfg.bn(shortcut, prefix + "_shortcut_1")
    out = keras.layers.Add(name=prefix + "_add")([out, shortcut])
    return cfg.relu(out, prefix + "_out"), expanded


def _preact_block(cfg, x, in_planes, planes, stride, prefix):
    out = cfg.relu(cfg.bn(x, prefix + "_bn1"), prefix + "_relu1")
    shortcut = x
    if stride != 1 or in_planes != planes:
        shortcut = cfg.conv(out, planes, 1, stride, prefix + "_shortcut_0")
    out = cfg.conv(out, planes, 3, stride, prefix + "_conv1")
    out = cfg.relu(cfg.bn(out, prefix + "_bn2"), prefix + "_relu2")
    out = cfg.conv(out, planes, 3, 1, prefix + "_conv2")
    return keras.layers.Add(name=prefix + "_add")([out, shortcut]), planes


def _wide_block(cfg, x, in_planes, out_planes, stride, prefix):
    if in_planes != out_planes:
        # The pre-activated input feeds both branches.
        x = cfg.relu(cfg.bn(x, prefix + "_bn1"), prefix + "_relu1")
        out = cfg.conv(x, out_planes, 3, stride, prefix + "_conv1")
        shortcut = cfg.conv(x, out_planes, 1, stride, prefix + "_convShortcut")
    else:
        out = cfg.relu(cfg.bn(x, prefix + "_bn1"), prefix + "_relu1")
        out = cfg.conv(out, out_planes, 3, stride, prefix + "_conv1")
        shortcut = x
    out = cfg.relu(cfg.bn(out, prefix + "_bn2"), prefix + "_relu2")
    out = cfg.conv(out, out_planes, 3, 1, prefix + "_conv2")
    return keras.layers.Add(name=prefix + "_add")([shortcut, out]), out_planes


def _resnet(cfg, block, stem_bn, final_bn, name):
    inputs, x = cfg.inputs()
    x = cfg.conv(x, 64, 3, cfg.stem_stride, "conv1")
    if stem_bn:
        x = cfg.relu(cfg.bn(x, "bn1"), "relu")
    in_planes = 64
    for stage, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        for index, block_stride in enumerate((stride, 1)):
            x, in_planes = block(cfg, x, in_planes, planes, block_stride, f"layer{stage}_{index}")
        if stage == 3:
            x = cfg.third_to_last(x)
    if final_bn:
        x = cfg.relu(cfg.bn(x, "bn"), "relu")
    return cfg.head(x, inputs, name)


# ----------------------------------------------------------------------------
# Public builders
# ----------------------------------------------------------------------------

_COMMON_ARGS = """
        num_classes: Positive integer, number of classes (logits).
            Defaults to `10`.
        input_shape: Shape of one image without the batch axis. Defaults to
            `(32, 32, 3)` for `channels_last`, `(3, 32, 32)` for
            `channels_first`. All dimensions must be known.
        data_format: `"channels_last"` or `"channels_first"`; `None` uses
            `keras.config.image_data_format()`.
        stem_stride: Stride of the first convolution: `1` for CIFAR, `2`
            for 64x64 Tiny-ImageNet. Does not change the parameter count.
        normalize: `None` (no input normalization, the Bench pipeline),
            `"cifar10"` (the CIFAR-10 mean/std, the SOTAs/ReBAT pipeline) or a
            `(mean, std)` pair. Adds a parameter-free
            `keras_rpat.layers.InputNormalization` as the first layer.
        name: Name of the returned model."""


def _doc(text):
    def decorate(fn):
        fn.__doc__ = text.replace("{common_args}", _COMMON_ARGS.strip("\n"))
        return fn

    return decorate


@_doc(
    """Standard ResNet-18 (BasicBlock, [2, 2, 2, 2]), CIFAR variant.

    Stem conv3x3(64) -> BN -> ReLU, four stages of two BasicBlocks
    (64/128/256/512 channels, strides 1/2/2/2), global average pooling
    (512-d `"penultimate"`) and a linear classifier. 11,173,962 trainable
    parameters for 10 classes. This is *not* the network the paper's Bench
    tables call "ResNet-18" (see `resnet18_bottleneck`).

    Args:
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.get("resnet18", num_classes=10)
    >>> logits = model(keras.ops.zeros((2, 32, 32, 3)))

    References:

    - """
    + _PAPER
    + """
    - He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
)
def resnet18(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    name="resnet18",
):
    cfg = _Config(num_classes, input_shape, data_format, stem_stride, normalize)
    return _resnet(cfg, _basic_block, stem_bn=True, final_bn=False, name=name)


@_doc(
    """The paper's Bench "ResNet-18": a Bottleneck ResNet with [2, 2, 2, 2].

    The network used for Tables 1, 2 and 5 and Figures 2 and 4
    (`RPAT_Benchmarks/models/resnet.py::resnet18`): stem conv3x3(64) -> BN ->
    ReLU, four stages of two Bottleneck blocks (output 256/512/1024/2048
    channels, strides 1/2/2/2), global average pooling (2048-d
    `"penultimate"`), linear classifier. 13,958,986 trainable parameters for
    10 classes.

    Args:
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.get("resnet18_bottleneck", num_classes=100)
    >>> logits = model(keras.ops.zeros((2, 32, 32, 3)))

    References:

    - """
    + _PAPER
    + """
    - He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
)
def resnet18_bottleneck(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    name="resnet18_bottleneck",
):
    cfg = _Config(num_classes, input_shape, data_format, stem_stride, normalize)
    return _resnet(cfg, _bottleneck_block, stem_bn=True, final_bn=False, name=name)


@_doc(
    """PreActResNet-18 of the SOTAs pipeline (Tables 3 and 6).

    `RPAT_SOTAs/networks/preactresnet.py`: stem conv3x3(64) without BN/ReLU,
    four stages of two pre-activation blocks (64/128/256/512, strides
    1/2/2/2; projection shortcuts are a 1x1 conv of the pre-activated input,
    without BN), final BN -> ReLU -> global average pooling (512-d
    `"penultimate"`) -> linear. 11,172,170 trainable parameters for 10
    classes. The SOTAs pipeline uses `normalize="cifar10"`.

    Args:
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.get("preact_resnet18", normalize="cifar10")
    >>> logits = model(keras.ops.zeros((2, 32, 32, 3)))

    References:

    - """
    + _PAPER
    + """
    - He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
    """
)
def preact_resnet18(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    name="preact_resnet18",
):
    cfg = _Config(num_classes, input_shape, data_format, stem_stride, normalize)
    return _resnet(cfg, _preact_block, stem_bn=False, final_bn=True, name=name)


@_doc(
    """WideResNet-`depth`-`widen_factor` (WRN) as in the RPAT code bases.

    Stem conv3x3(16), three groups of `n = (depth - 4) / 6` pre-activation
    BasicBlocks (`16k`, `32k`, `64k` channels for `k = widen_factor`, strides
    1/2/2; when a block changes width, the pre-activated input feeds both the
    residual branch and the 1x1 projection shortcut), final BN -> ReLU ->
    global average pooling (`64k`-d `"penultimate"`) -> linear. Convolutions
    are initialised Kaiming-normal (fan-out), the classifier bias with zeros.
    `"third_to_last"` is the flattened output of the second group.

    Args:
        depth: Integer, total depth; `depth - 4` must be a positive multiple
            of 6 (34 for WRN-34-10, 28 for WRN-28-10). Defaults to `34`.
        widen_factor: Positive integer width multiplier. Defaults to `10`.
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.wide_resnet(depth=10, widen_factor=2)
    >>> logits = model(keras.ops.zeros((2, 32, 32, 3)))

    References:

    - """
    + _PAPER
    + """
    - Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """
)
def wide_resnet(
    depth=34,
    widen_factor=10,
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    name=None,
):
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            "`depth` must be an integer such that `depth - 4` is a positive "
            f"multiple of 6 (10, 16, 22, 28, 34, ...). Received: depth={depth!r}"
        )
    widen_factor = _checks.check_positive_int(widen_factor, "widen_factor")
    cfg = _Config(
        num_classes,
        input_shape,
        data_format,
        stem_stride,
        normalize,
        kernel_initializer="kaiming_fan_out",
    )
    if name is None:
        name = f"wide_resnet{depth}_{widen_factor}"
    blocks_per_group = (depth - 4) // 6
    widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)

    inputs, x = cfg.inputs()
    x = cfg.conv(x, widths[0], 3, cfg.stem_stride, "conv1")
    in_planes = widths[0]
    for group, stride in enumerate((1, 2, 2), start=1):
        for index in range(blocks_per_group):
            x, in_planes = _wide_block(
                cfg,
                x,
                in_planes,
                widths[group],
                stride if index == 0 else 1,
                f"block{group}_layer_{index}",
            )
        if group == 2:
            x = cfg.third_to_last(x)
    x = cfg.relu(cfg.bn(x, "bn1"), "relu")
    return cfg.head(x, inputs, name, bias_initializer="zeros")


@_doc(
    """WideResNet-34-10 (SOTAs Table 4; Tiny-ImageNet in Figure 5).

    46,160,474 trainable parameters for 10 classes. See `wide_resnet`.

    Args:
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.get("wrn34_10", normalize="cifar10")

    References:

    - """
    + _PAPER
    + """
    - Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """
)
def wide_resnet34_10(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    name="wide_resnet34_10",
):
    return wide_resnet(
        34,
        10,
        num_classes=num_classes,
        input_shape=input_shape,
        data_format=data_format,
        stem_stride=stem_stride,
        normalize=normalize,
        name=name,
    )


@_doc(
    """WideResNet-28-10 (Bench `wrn2810`).

    36,479,194 trainable parameters for 10 classes. See `wide_resnet`.

    Args:
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.get("wrn28_10", num_classes=100)

    References:

    - """
    + _PAPER
    + """
    - Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """
)
def wide_resnet28_10(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    name="wide_resnet28_10",
):
    return wide_resnet(
        28,
        10,
        num_classes=num_classes,
        input_shape=input_shape,
        data_format=data_format,
        stem_stride=stem_stride,
        normalize=normalize,
        name=name,
    )


@_doc(
    """A tiny conv-BN-ReLU network for tests and demos (a few thousand weights).

    Three conv3x3 -> BN -> ReLU blocks (strides 1, 2, 2), global average
    pooling (`"penultimate"`) and a linear classifier. `"third_to_last"` is
    the flattened output of the second block. 6,418 trainable parameters
    with the default widths and 10 classes.

    Args:
        widths: Three positive integers, the channels of the three blocks.
            Defaults to `(8, 16, 32)`.
{common_args}

    Returns:
        A `keras.Model` from images to logits.

    Example:

    >>> model = keras_rpat.models.get("small_cnn")
    >>> logits = model(keras.ops.zeros((2, 32, 32, 3)))

    References:

    - """
    + _PAPER
    + """
    """
)
def small_cnn(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    widths=(8, 16, 32),
    name="small_cnn",
):
    widths = tuple(widths)
    if len(widths) != 3:
        raise ValueError(f"`widths` must have 3 entries. Received: widths={widths}")
    for width in widths:
        _checks.check_positive_int(width, "widths")
    cfg = _Config(num_classes, input_shape, data_format, stem_stride, normalize)
    inputs, x = cfg.inputs()
    for index, (width, stride) in enumerate(zip(widths, (cfg.stem_stride, 2, 2)), start=1):
        x = cfg.conv(x, width, 3, stride, f"conv{index}")
        x = cfg.relu(cfg.bn(x, f"bn{index}"), f"relu{index}")
        if index == 2:
            x = cfg.third_to_last(x)
    return cfg.head(x, inputs, name)


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------

# Each name of `_names.MODEL_NAMES` is the builder function of that name.
_BUILDERS = {name: globals()[name] for name in MODEL_NAMES}


def get(
    name,
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    **options,
):
    """Builds a classifier of the RPAT paper by name.

    Args:
        name: One of `keras_rpat.models.list_models()` (`"resnet18"`,
            `"resnet18_bottleneck"`, `"preact_resnet18"`,
            `"wide_resnet34_10"`, `"wide_resnet28_10"`, `"small_cnn"`) or an
            alias; case, `-` and `_` are ignored (`"PreActResNet18"`,
            `"wrn34-10"`).
        num_classes: Positive integer, number of classes (logits).
            Defaults to `10`.
        input_shape: Shape of one image without the batch axis. Defaults to
            `(32, 32, 3)` for `channels_last`, `(3, 32, 32)` for
            `channels_first`. All dimensions must be known.
        data_format: `"channels_last"` or `"channels_first"`; `None` uses
            `keras.config.image_data_format()`.
        stem_stride: Stride of the first convolution: `1` for CIFAR, `2`
            for 64x64 Tiny-ImageNet. Does not change the parameter count.
        normalize: `None` (no input normalization, the Bench pipeline),
            `"cifar10"` (the CIFAR-10 mean/std, the SOTAs/ReBAT pipeline) or a
            `(mean, std)` pair. Adds a parameter-free
            `keras_rpat.layers.InputNormalization` as the first layer.
        **options: Extra keyword arguments of the builder (e.g. `widths`
            for `small_cnn`). The model is named after its canonical name;
            call the builder (e.g. `keras_rpat.models.resnet18(name=...)`)
            for another name.

    Returns:
        A `keras.Model` from images to logits, with layers `"logits"`,
        `"penultimate"` and `"third_to_last"`.

    Example:

    >>> model = keras_rpat.models.get("resnet18_bottleneck", num_classes=10)
    >>> tiny = keras_rpat.models.get(
    ...     "wrn34_10", num_classes=200, input_shape=(64, 64, 3), stem_stride=2
    ... )

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025.
    """
    builder = _BUILDERS[canonical_name(name)]
    return builder(
        num_classes=num_classes,
        input_shape=input_shape,
        data_format=data_format,
        stem_stride=stem_stride,
        normalize=normalize,
        **options,
    )


_PROXY_ALIASES = {"second_to_last": "penultimate"}


def feature_model(model, proxies=("penultimate", "third_to_last")):
    """Returns a model that outputs `[logits, *features]` for RPAT proxies.

    The new model shares every layer (and so every weight and BatchNorm
    statistic) with `model`; one call runs one forward pass, so training-mode
    BatchNorm behaves exactly as in a call of `model`.

    Args:
        model: A functional model built by `keras_rpat.models` (or any
            single-output functional model with layers named after
            `proxies`).
        proxies: Layer names (or one name) whose outputs are returned after
            the logits: `"penultimate"` (alias `"second_to_last"`), the pooled
            feature vector, and `"third_to_last"`, the flattened output of the
            stage before the last. Any other layer name also works.

    Returns:
        A `keras.Model` from the inputs of `model` to `[logits, *features]`.

    Example:

    >>> model = keras_rpat.models.get("resnet18_bottleneck")
    >>> features = keras_rpat.models.feature_model(model)
    >>> logits, penultimate, third = features(keras.ops.zeros((2, 32, 32, 3)))
    >>> penultimate.shape, third.shape
    ((2, 2048), (2, 65536))

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025 (Table 5, perception proxies).
    """
    if isinstance(proxies, str):
        proxies = (proxies,)
    try:
        inputs = model.input  # the user's input structure, not a list
        outputs = model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if inputs is None or not outputs:
        raise ValueError(
            "`feature_model` needs a functional `keras.Model` with defined "
            f"inputs and outputs. Received: model={model!r}"
        )
    if len(outputs) != 1:
        raise ValueError(
            "`feature_model` needs a model with a single (logits) output. "
            f"Received a model with {len(outputs)} outputs."
        )
    features = []
    for proxy in proxies:
        layer_name = _PROXY_ALIASES.get(proxy, proxy)
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise ValueError(
                f"Model {model.name!r} has no layer named {layer_name!r}. "
                "Expected proxies such as 'penultimate' and 'third_to_last' "
                f"(models from `keras_rpat.models`). Received: proxies={proxies}"
            ) from None
        features.append(layer.output)
    return keras.Model(inputs, [outputs[0], *features], name=f"{model.name}_features")


# ----------------------------------------------------------------------------
# PyTorch checkpoints
# ----------------------------------------------------------------------------

# A PyTorch parameter name -> the index of the Keras weight it fills and how a
# torch array becomes the Keras one (Conv2d (out, in, kh, kw) -> (kh, kw, in,
# out); Linear (out, in) -> (in, out)).
_TORCH_PARAMS = {
    keras.layers.Conv2D: {"weight": (0, (2, 3, 1, 0))},
    keras.layers.Dense: {"weight": (0, (1, 0)), "bias": (1, None)},
    keras.layers.BatchNormalization: {
        "weight": (0, None),
        "bias": (1, None),
        "running_mean": (2, None),
        "running_var": (3, None),
    },
}
# The classifier is `linear` in the ResNets, `fc` in the WideResNets.
_TORCH_HEADS = ("linear", "fc")
# Keys a PyTorch checkpoint may hold that no Keras weight needs: BatchNorm's
# step counter, and the `sub_block1` group that TRADES / MART (and RobustBench
# with `sub_block1=True`) build but never call.
_TORCH_IGNORED = ("num_batches_tracked",)
_TORCH_IGNORED_MODULES = ("sub_block1",)


def _torch_targets(model):
    """`{(keras layer name, torch parameter name): (layer, weight index, transpose)}` of every weight."""
    targets = {}
    for layer in model.layers:
        params = next((p for cls, p in _TORCH_PARAMS.items() if isinstance(layer, cls)), None)
        if params is None:
            continue
        for param, (index, transpose) in params.items():
            if index < len(layer.weights):
                targets[(layer.name, param)] = (layer, index, transpose)
    return targets


def _torch_target_key(key):
    """`"module.layer1.0.shortcut.0.weight"` -> `("layer1_0_shortcut_0", "weight")`; `None` if ignored."""
    while key.startswith("module."):
        key = key[len("module.") :]
    module, _, param = key.rpartition(".")
    if param in _TORCH_IGNORED or module.split(".")[0] in _TORCH_IGNORED_MODULES:
        return None
    if module in _TORCH_HEADS:
        module = "logits"
    return module.replace(".", "_"), param


def _as_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor (torch is not imported here)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_weights(model, state_dict):
    """Copies a PyTorch `state_dict` of the same architecture into `model`'s weights.

    Keys follow the PyTorch module paths of the reference code bases: the
    Keras layer `layer1_0_shortcut_0` takes `layer1.0.shortcut.0.weight`, the
    `"logits"` layer takes `linear.*` or `fc.*`. DataParallel's `module.`
    prefix, `num_batches_tracked` and TRADES' unused `sub_block1.*` are
    accepted and ignored. Nothing is assigned unless every key matches.

    Args:
        model: a model of `keras_rpat.models`.
        state_dict: a mapping from PyTorch names to tensors or NumPy arrays.

    Raises:
        ValueError: listing the keys without a Keras weight, the Keras weights
            without a key and the keys of the wrong shape.
    """
    targets = _torch_targets(model)
    assigned, unmatched, misshaped, seen = {}, [], [], set()
    for key, value in state_dict.items():
        target = _torch_target_key(key)
        if target is None:
            continue
        if target not in targets:
            unmatched.append(key)
            continue
        seen.add(target)
        layer, index, transpose = targets[target]
        array = _as_numpy(value)
        if transpose is not None and array.ndim == len(transpose):
            array = array.transpose(transpose)
        expected = tuple(layer.weights[index].shape)
        if array.shape != expected:
            misshaped.append(f"{key}: {tuple(_as_numpy(value).shape)} (Keras {layer.name} needs {expected})")
            continue
        assigned[target] = array
    missing = [f"{layer}.{param}" for (layer, param) in targets if (layer, param) not in seen]
    if unmatched or missing or misshaped:
        lines = [
            f"The PyTorch state_dict does not fit {model.name!r} ({len(state_dict)} keys, {len(targets)} weights)."
        ]
        for title, items in (
            ("keys with no Keras weight", unmatched),
            ("Keras weights with no key (torch name with '_' for '.')", missing),
            ("keys of the wrong shape", misshaped),
        ):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        lines.append("Check the architecture (--arch), num_classes and the options (stem_stride, widths).")
        raise ValueError("\n".join(lines))
    for (layer_name, param), array in assigned.items():
        layer, index, _ = targets[(layer_name, param)]
        layer.weights[index].assign(array.astype(layer.weights[index].dtype))
    return model


def torch_state_dict(model, keys):
    """`{key: numpy array}` of `model`'s weights under the PyTorch names `keys`.

    The inverse of `load_torch_weights`: `keys` are the `state_dict` keys of
    the matching PyTorch module (`keras_rpat.torch_models.get(...)`);
    `num_batches_tracked` is written as 0.

    Raises:
        ValueError: naming the keys without a Keras weight.
    """
    targets = _torch_targets(model)
    out, unmatched = {}, []
    for key in keys:
        target = _torch_target_key(key)
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros((), dtype=np.int64)
        elif target not in targets:
            unmatched.append(key)
        else:
            layer, index, transpose = targets[target]
            array = keras.ops.convert_to_numpy(layer.weights[index]).astype(np.float32)
            if transpose is not None:
                array = array.transpose(np.argsort(transpose))
            out[key] = np.ascontiguousarray(array)
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} PyTorch keys have no weight in {model.name!r}: {', '.join(unmatched[:12])}. "
            "Export with the architecture the model was built with (--arch)."
        )
    return out


def from_torch(name, state_dict_or_path, num_classes=10, **options):
    """Builds `name` and loads a PyTorch checkpoint of the same architecture into it.

    Accepts the key layouts of RPAT_Benchmarks, RPAT_SOTAs / ReBAT, TRADES /
    MART and RobustBench (`PreActResNet(PreActBlockV2, bn_before_fc=True)`,
    `WideResNet`), with or without DataParallel's `module.` prefix and
    `num_batches_tracked`; a file may hold the `state_dict` itself or a dict
    with it under `"state_dict"`, `"model"`, ... (see `load_torch_weights`).

    Args:
        name: a model name of `list_models()` (or an alias), or a built Keras
            model to load into.
        state_dict_or_path: a mapping of tensors / arrays, or the path of a
            file written with `torch.save` (read with `weights_only=True`).
        num_classes: number of classes of the checkpoint.
        **options: the other arguments of `keras_rpat.models.get`
            (`normalize`, `stem_stride`, `data_format`, `input_shape`, ...).

    Returns:
        The Keras model with the checkpoint's weights.

    Example:

    >>> model = keras_rpat.models.from_torch("preact_resnet18", "model.pt", normalize="cifar10")
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        from keras_rpat import torch_models  # torch is imported only when a file is read

        state_dict_or_path = torch_models.load_state_dict(state_dict_or_path)
    model = name if isinstance(name, keras.Model) else get(name, num_classes=num_classes, **options)
    return load_torch_weights(model, state_dict_or_path)
