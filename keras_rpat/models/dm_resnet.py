"""DeepMind's SiLU networks of the RobustBench leaderboard: `DMWideResNet` and `DMPreActResNet`.

As RobustBench's `model_zoo/architectures/dm_wide_resnet.py` (DeepMind's
`adversarial_robustness/pytorch/model_zoo.py`) defines them, for the checkpoints
of Gowal et al. 2020, Rebuffi et al. 2021 and Wang et al. 2023. What sets them
apart from the paper's networks: the input is normalised inside the network
(the model holds the dataset's mean and std), the activation is SiLU
(`x * sigmoid(x)`), a stride-2 3x3 convolution pads its input only after the
image (`F.pad(x, (0, 1, 0, 1))`, TensorFlow's `SAME`), and the layers are
named `init_conv`, `layer.0.block.0.batchnorm_0`, ..., `logits` (here with `_`
for `.`, so that a RobustBench `state_dict` loads by name).
"""

import keras

from keras_rpat import _checks
from keras_rpat.models.builder import Config
from keras_rpat.models.builder import check_wide_resnet_depth
from keras_rpat.models.builder import document
from keras_rpat.models.builder import wide_resnet_groups

GOWAL = 'Gowal et al., "Uncovering the Limits of Adversarial Training against Norm-Bounded Adversarial Examples", 2020.'
REBUFFI = 'Rebuffi et al., "Fixing Data Augmentation to Improve Adversarial Robustness", 2021.'
WANG = 'Wang et al., "Better Diffusion Models Further Improve Adversarial Training", ICML 2023.'

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "relu": "relu"}

_DM_ARGS = """
        activation: `"silu"` (RobustBench's `Swish`, every leaderboard
            entry) or `"relu"` (the constructor's default). Defaults to
            `"silu"`.
{input_args}
        normalize: `"auto"` (default): the network normalises its input
            with the CIFAR-100 mean/std when `num_classes` is 100 and with
            the CIFAR-10 ones otherwise, as RobustBench builds its CIFAR-10
            and CIFAR-100 entries. Or `"cifar10"`, `"cifar100"`, a
            `(mean, std)` pair, or `None` (inputs normalised outside).
        name: Name of the returned model."""

_RETURNS = "A `keras.Model` from images (pixels in `[0, 1]`) to logits."


def _check_activation(activation):
    key = activation.lower() if isinstance(activation, str) else None
    if key not in _ACTIVATIONS:
        raise ValueError(f'`activation` must be "silu" or "relu". Received: activation={activation!r}')
    return _ACTIVATIONS[key]


def _dm_config(num_classes, input_shape, data_format, stem_stride, normalize):
    if isinstance(normalize, str) and normalize.lower() == "auto":
        normalize = "cifar100" if num_classes == 100 else "cifar10"
    return Config(num_classes, input_shape, data_format, stem_stride, normalize)


def _dm_wide_block(cfg, x, in_planes, out_planes, stride, activation, prefix):
    """DeepMind's WideResNet `_Block`: the projection (when the width changes) takes the activated input."""
    activated = cfg.activation(cfg.bn(x, prefix + "_batchnorm_0"), activation, prefix + "_relu_0")
    out = cfg.conv(activated, out_planes, 3, stride, prefix + "_conv_0", pad_end=True)
    out = cfg.activation(cfg.bn(out, prefix + "_batchnorm_1"), activation, prefix + "_relu_1")
    out = cfg.conv(out, out_planes, 3, 1, prefix + "_conv_1")
    shortcut = x
    if in_planes != out_planes:
        shortcut = cfg.conv(activated, out_planes, 1, stride, prefix + "_shortcut")
    return keras.layers.Add(name=prefix + "_add")([shortcut, out])


@document(
    """DeepMind's WideResNet-`depth`-`width` (RobustBench's `DMWideResNet`).

    Input normalization (see `normalize`), stem conv3x3(16) `init_conv`,
    three groups `layer_0..2` of `(depth - 4) / 6` pre-activation blocks
    (`16 * width`, `32 * width`, `64 * width` channels, strides 1/2/2; BN ->
    activation -> conv3x3 -> BN -> activation -> conv3x3; when the width
    changes, the activated input also feeds a 1x1 projection `shortcut`),
    final BN -> activation -> global average pooling (`"penultimate"`) ->
    linear `"logits"`. Stride-2 convolutions pad only after the image.
    PyTorch's default initialisers. The parameter count equals the WideResNet
    of the same size (`wide_resnet`): 36,479,194 for WRN-28-10 and
    266,796,506 for WRN-70-16 with 10 classes. `"third_to_last"` is the
    flattened output of the second group. RobustBench's `avg_pool2d(8)` is
    the global average on 32x32 inputs.

    Args:
        depth: Integer, total depth; `depth - 4` must be a positive multiple
            of 6 (28, 34, 70, 106 on the leaderboard). Defaults to `28`.
        width: Positive integer width multiplier (10, 16, 20). Defaults to
            `10`.
"""
    + _DM_ARGS.strip("\n"),
    references=(GOWAL, REBUFFI, WANG),
    example="keras_rpat.models.dm_wide_resnet(depth=10, width=1)",
    returns=_RETURNS,
)
def dm_wide_resnet(
    depth=28,
    width=10,
    activation="silu",
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize="auto",
    name=None,
):
    depth = check_wide_resnet_depth(depth)
    width = _checks.check_positive_int(width, "width")
    activation = _check_activation(activation)
    cfg = _dm_config(num_classes, input_shape, data_format, stem_stride, normalize)
    if name is None:
        name = f"dm_wide_resnet{depth}_{width}"
    inputs, x = cfg.inputs()
    x = cfg.conv(x, 16, 3, cfg.stem_stride, "init_conv")
    for group, blocks in enumerate(wide_resnet_groups(depth, width)):
        for index, (in_planes, out_planes, stride) in enumerate(blocks):
            x = _dm_wide_block(cfg, x, in_planes, out_planes, stride, activation, f"layer_{group}_block_{index}")
        if group == 1:
            x = cfg.third_to_last(x)
    x = cfg.activation(cfg.bn(x, "batchnorm"), activation, "relu")
    return cfg.head(x, inputs, name)


def _preset(depth, width, entries):
    """`dm_wide_resnet{depth}_{width}`: `dm_wide_resnet` of that size, documented."""

    def build(
        activation="silu",
        num_classes=10,
        input_shape=None,
        data_format=None,
        stem_stride=1,
        normalize="auto",
        name=f"dm_wide_resnet{depth}_{width}",
    ):
        return dm_wide_resnet(
            depth,
            width,
            activation=activation,
            num_classes=num_classes,
            input_shape=input_shape,
            data_format=data_format,
            stem_stride=stem_stride,
            normalize=normalize,
            name=name,
        )

    build.__name__ = build.__qualname__ = f"dm_wide_resnet{depth}_{width}"
    return document(
        f"""DeepMind's WideResNet-{depth}-{width} with SiLU (RobustBench's `DMWideResNet(depth={depth},
    width={width}, activation_fn=Swish)`; {entries}).

    See `dm_wide_resnet`.

    Args:
"""
        + _DM_ARGS.strip("\n"),
        references=(GOWAL,),
        returns=_RETURNS,
    )(build)


dm_wide_resnet28_10 = _preset(28, 10, "Gowal et al. 2020, Rebuffi et al. 2021, Wang et al. 2023")
dm_wide_resnet34_10 = _preset(34, 10, "Rade & Moosavi-Dezfooli 2021")
dm_wide_resnet34_20 = _preset(34, 20, "Gowal et al. 2020")
dm_wide_resnet70_16 = _preset(70, 16, "Gowal et al. 2020, Rebuffi et al. 2021, Wang et al. 2023")


def _dm_preact_block(cfg, x, in_planes, out_planes, stride, activation, prefix):
    """DeepMind's `_PreActBlock`: the projection is a 3x3 convolution of the block's input (not activated)."""
    out = cfg.activation(cfg.bn(x, prefix + "_batchnorm_0"), activation, prefix + "_relu_0")
    shortcut = x
    if stride != 1 or in_planes != out_planes:
        shortcut = cfg.conv(x, out_planes, 3, stride, prefix + "_shortcut", pad_end=True)
    out = cfg.conv(out, out_planes, 3, stride, prefix + "_conv_2d_1", pad_end=True)
    out = cfg.activation(cfg.bn(out, prefix + "_batchnorm_1"), activation, prefix + "_relu_1")
    out = cfg.conv(out, out_planes, 3, 1, prefix + "_conv_2d_2")
    return keras.layers.Add(name=prefix + "_add")([out, shortcut])


@document(
    """DeepMind's PreActResNet-18 with SiLU (RobustBench's `DMPreActResNet(depth=18, activation_fn=Swish)`).

    The ResNet-18 of Rebuffi et al. 2021 and Wang et al. 2023: input
    normalization (see `normalize`), stem conv3x3(64) `conv_2d`, four stages
    `layer_0..3` of two pre-activation blocks (64/128/256/512 channels,
    strides 1/2/2/2; the projection `shortcut` is a 3x3 convolution of the
    block's input, not of its activation), final BN -> activation -> global
    average pooling (512-d `"penultimate"`) -> linear `"logits"`. Stride-2
    convolutions pad only after the image. 12,548,426 trainable parameters
    for 10 classes. `"third_to_last"` is the flattened output of `layer_2`.

    Args:
"""
    + _DM_ARGS.strip("\n"),
    references=(REBUFFI, WANG),
    example='keras_rpat.models.get("dm_preact_resnet18", num_classes=100)  # CIFAR-100 statistics',
    returns=_RETURNS,
)
def dm_preact_resnet18(
    activation="silu",
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize="auto",
    name="dm_preact_resnet18",
):
    activation = _check_activation(activation)
    cfg = _dm_config(num_classes, input_shape, data_format, stem_stride, normalize)
    inputs, x = cfg.inputs()
    x = cfg.conv(x, 64, 3, cfg.stem_stride, "conv_2d")
    in_planes = 64
    for stage, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
        for index, block_stride in enumerate((stride, 1)):
            x = _dm_preact_block(cfg, x, in_planes, planes, block_stride, activation, f"layer_{stage}_{index}")
            in_planes = planes
        if stage == 2:
            x = cfg.third_to_last(x)
    x = cfg.activation(cfg.bn(x, "batchnorm"), activation, "relu")
    return cfg.head(x, inputs, name)
