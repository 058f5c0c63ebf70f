"""What every builder of `keras_rpat.models` shares: its arguments (`Config`) and its docstring."""

import numbers

import keras

from keras_rpat import _checks
from keras_rpat import layers as rpat_layers

PAPER = 'Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry", ICCV 2025.'


# RobustBench's CIFAR-100 statistics (its DM networks normalise CIFAR-100 inputs with these).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_NAMED_STATISTICS = {
    "cifar10": (rpat_layers.CIFAR10_MEAN, rpat_layers.CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}
_NORMALIZE_VALUES = 'None, "cifar10", "cifar100" or a `(mean, std)` pair'


def resolve_normalize(normalize):
    """`normalize` -> `None` or a `(mean, std)` pair."""
    if normalize is None:
        return None
    if isinstance(normalize, str):
        statistics = _NAMED_STATISTICS.get(normalize.lower().replace("-", "").replace("_", ""))
        if statistics is not None:
            return statistics
        raise ValueError(f"`normalize` must be {_NORMALIZE_VALUES}. Received: normalize={normalize!r}")
    if isinstance(normalize, dict) and set(normalize) == {"mean", "std"}:
        return normalize["mean"], normalize["std"]
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        return normalize[0], normalize[1]
    raise ValueError(f"`normalize` must be {_NORMALIZE_VALUES}. Received: normalize={normalize!r}")


def check_wide_resnet_depth(depth):
    """A WideResNet's depth: `depth - 4` a positive multiple of 6 (blocks of two convolutions, three groups)."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            "`depth` must be an integer such that `depth - 4` is a positive "
            f"multiple of 6 (10, 16, 22, 28, 34, ...). Received: depth={depth!r}"
        )
    return int(depth)


def wide_resnet_groups(depth, width):
    """The three groups of blocks of a WideResNet-`depth`-`width` after its 16-channel stem: `(depth - 4) / 6`
    blocks `(in_planes, out_planes, stride)` of `16 * width`, `32 * width`, `64 * width` channels; the first
    block of a group changes the width, with stride 1, 2, 2."""
    blocks = (depth - 4) // 6
    groups, in_planes = [], 16
    for stride, out_planes in zip((1, 2, 2), (16 * width, 32 * width, 64 * width)):
        groups.append([(in_planes, out_planes, stride)] + [(out_planes, out_planes, 1)] * (blocks - 1))
        in_planes = out_planes
    return groups


class Config:
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
        self.normalize = resolve_normalize(normalize)
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

    def conv(self, x, filters, kernel_size, strides, name, pad_end=False):
        """A bias-free convolution; strided ones are padded by `kernel_size // 2` on both sides, as
        PyTorch's `padding=k // 2` does, or only after the image with `pad_end=True` (DeepMind's
        `F.pad(x, (0, 1, 0, 1))` before a stride-2 3x3 convolution)."""
        if kernel_size > 1 and strides > 1:
            # Keras "same" pads by the image size ((0, 1) on even sizes): the padding is explicit.
            pad = kernel_size // 2
            padding = ((0, pad), (0, pad)) if pad_end else pad
            x = keras.layers.ZeroPadding2D(padding, data_format=self.data_format, name=name + "_pad")(x)
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

    def activation(self, x, activation, name):
        """`"relu"` (a `ReLU` layer, as `relu`) or `"silu"` (`x * sigmoid(x)`, an `Activation` layer)."""
        if activation == "relu":
            return self.relu(x, name)
        return keras.layers.Activation(activation, name=name)(x)

    def third_to_last(self, x):
        """Flattened stage output, kept on the main path (see module doc)."""
        shape = tuple(x.shape[1:])
        # Flatten without the channels_first transpose: a pure view.
        flat = keras.layers.Flatten(data_format="channels_last", name="third_to_last")(x)
        return keras.layers.Reshape(shape, name="third_to_last_reshape")(flat)

    def head(self, x, inputs, name, bias_initializer=None, use_bias=True):
        features = keras.layers.GlobalAveragePooling2D(data_format=self.data_format, name="penultimate")(x)
        fan_in = int(features.shape[-1])
        if bias_initializer is None:
            bias_initializer = rpat_layers.TorchBiasUniform(fan_in)
        logits = keras.layers.Dense(
            self.num_classes,
            use_bias=use_bias,
            kernel_initializer=rpat_layers.torch_kernel_initializer(),
            bias_initializer=bias_initializer,
            name="logits",
        )(features)
        return keras.Model(inputs, logits, name=name)


INPUT_ARGS = """
        num_classes: Positive integer, number of classes (logits).
            Defaults to `10`.
        input_shape: Shape of one image without the batch axis. Defaults to
            `(32, 32, 3)` for `channels_last`, `(3, 32, 32)` for
            `channels_first`. All dimensions must be known.
        data_format: `"channels_last"` or `"channels_first"`; `None` uses
            `keras.config.image_data_format()`.
        stem_stride: Stride of the first convolution: `1` for CIFAR, `2`
            for 64x64 Tiny-ImageNet. Does not change the parameter count."""

COMMON_ARGS = (
    INPUT_ARGS
    + """
        normalize: `None` (no input normalization, the Bench pipeline),
            `"cifar10"` (the CIFAR-10 mean/std, the SOTAs/ReBAT pipeline),
            `"cifar100"` (RobustBench's CIFAR-100 mean/std) or a
            `(mean, std)` pair. Adds a parameter-free
            `keras_rpat.layers.InputNormalization` as the first layer.
        name: Name of the returned model."""
)


_IMAGES_TO_LOGITS = "A `keras.Model` from images to logits."


def document(text, references, example=None, returns=_IMAGES_TO_LOGITS):
    """A builder's docstring: `text` (its summary, description and `Args:`, where `{common_args}` stands for
    every argument of `Config` and `name`, `{input_args}` for all but `normalize` and `name`, for builders
    that document those themselves), then its Returns, Example (`model = <example>` called on a batch of
    zeros) and References sections."""
    text = text.replace("{common_args}", COMMON_ARGS.strip("\n")).replace("{input_args}", INPUT_ARGS.strip("\n"))
    sections = [text.rstrip(), f"    Returns:\n        {returns}"]
    if example is not None:
        sections.append(
            f"    Example:\n\n    >>> model = {example}\n    >>> logits = model(keras.ops.zeros((2, 32, 32, 3)))"
        )
    sections.append("    References:\n\n" + "\n".join(f"    - {reference}" for reference in references))

    def decorate(fn):
        fn.__doc__ = "\n\n".join(sections) + "\n    "
        return fn

    return decorate
