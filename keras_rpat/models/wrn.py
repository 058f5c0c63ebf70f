"""WideResNets (WRN-34-10, WRN-28-10, any depth and width), as in the RPAT code bases."""

import keras

from keras_rpat import _checks
from keras_rpat.models.builder import PAPER
from keras_rpat.models.builder import Config
from keras_rpat.models.builder import check_wide_resnet_depth
from keras_rpat.models.builder import document
from keras_rpat.models.builder import wide_resnet_groups

ZAGORUYKO = 'Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.'


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
    return keras.layers.Add(name=prefix + "_add")([shortcut, out])


@document(
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
        bias_last: Whether the classifier has a bias. `False` is
            RobustBench's `WideResNet(bias_last=False)`. Defaults to `True`.
{common_args}
""",
    references=(PAPER, ZAGORUYKO),
    example="keras_rpat.models.wide_resnet(depth=10, widen_factor=2)",
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
    bias_last=True,
):
    depth = check_wide_resnet_depth(depth)
    use_bias = _checks.check_bool(bias_last, "bias_last")
    widen_factor = _checks.check_positive_int(widen_factor, "widen_factor")
    cfg = Config(num_classes, input_shape, data_format, stem_stride, normalize, kernel_initializer="kaiming_fan_out")
    if name is None:
        name = f"wide_resnet{depth}_{widen_factor}"
    inputs, x = cfg.inputs()
    x = cfg.conv(x, 16, 3, cfg.stem_stride, "conv1")
    for group, blocks in enumerate(wide_resnet_groups(depth, widen_factor), start=1):
        for index, (in_planes, out_planes, stride) in enumerate(blocks):
            x = _wide_block(cfg, x, in_planes, out_planes, stride, f"block{group}_layer_{index}")
        if group == 2:
            x = cfg.third_to_last(x)
    x = cfg.relu(cfg.bn(x, "bn1"), "relu")
    return cfg.head(x, inputs, name, bias_initializer="zeros", use_bias=use_bias)


def _preset(depth, widen_factor, use, trainable, example):
    """`wide_resnet{depth}_{widen_factor}`: `wide_resnet` of that size, documented."""

    def build(
        num_classes=10,
        input_shape=None,
        data_format=None,
        stem_stride=1,
        normalize=None,
        name=f"wide_resnet{depth}_{widen_factor}",
        bias_last=True,
    ):
        return wide_resnet(
            depth,
            widen_factor,
            num_classes=num_classes,
            input_shape=input_shape,
            data_format=data_format,
            stem_stride=stem_stride,
            normalize=normalize,
            name=name,
            bias_last=bias_last,
        )

    build.__name__ = build.__qualname__ = f"wide_resnet{depth}_{widen_factor}"
    return document(
        f"""WideResNet-{depth}-{widen_factor} ({use}).

    {trainable} trainable parameters for 10 classes. See `wide_resnet`.

    Args:
        bias_last: Whether the classifier has a bias (see `wide_resnet`).
            Defaults to `True`.
{{common_args}}
""",
        references=(PAPER, ZAGORUYKO),
        example=example,
    )(build)


wide_resnet34_10 = _preset(
    34,
    10,
    use="SOTAs Table 4; Tiny-ImageNet in Figure 5",
    trainable="46,160,474",
    example='keras_rpat.models.get("wrn34_10", normalize="cifar10")',
)
wide_resnet28_10 = _preset(
    28,
    10,
    use="Bench `wrn2810`",
    trainable="36,479,194",
    example='keras_rpat.models.get("wrn28_10", num_classes=100)',
)
