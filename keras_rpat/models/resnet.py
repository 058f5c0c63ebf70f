"""The ResNet-18 family: BasicBlock, Bottleneck (the paper's Bench "ResNet-18") and PreAct."""

import keras

from keras_rpat.models.builder import PAPER
from keras_rpat.models.builder import Config
from keras_rpat.models.builder import document

HE_RESNET = 'He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.'
HE_PREACT = 'He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.'


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


def _preact_block(cfg, x, in_planes, planes, stride, prefix, shortcut_on_input=False):
    out = cfg.relu(cfg.bn(x, prefix + "_bn1"), prefix + "_relu1")
    shortcut = x
    if stride != 1 or in_planes != planes:
        # The projection takes the pre-activated input (RobustBench's PreActBlockV2), or the block's
        # input itself (its PreActBlock, in its PreActResNet18()).
        shortcut = cfg.conv(x if shortcut_on_input else out, planes, 1, stride, prefix + "_shortcut_0")
    out = cfg.conv(out, planes, 3, stride, prefix + "_conv1")
    out = cfg.relu(cfg.bn(out, prefix + "_bn2"), prefix + "_relu2")
    out = cfg.conv(out, planes, 3, 1, prefix + "_conv2")
    return keras.layers.Add(name=prefix + "_add")([out, shortcut]), planes


def _preact_block_input_shortcut(cfg, x, in_planes, planes, stride, prefix):
    return _preact_block(cfg, x, in_planes, planes, stride, prefix, shortcut_on_input=True)


def _variant(name, block, stem_bn, final_bn, text, example, references):
    """The builder `name`: a ResNet-18 of `block`s, with BN -> ReLU after its stem (`stem_bn`) and before its
    pooling (`final_bn`), documented."""

    def build(num_classes=10, input_shape=None, data_format=None, stem_stride=1, normalize=None, name=name):
        cfg = Config(num_classes, input_shape, data_format, stem_stride, normalize)
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

    build.__name__ = build.__qualname__ = name
    return document(text, references, example)(build)


resnet18 = _variant(
    "resnet18",
    _basic_block,
    stem_bn=True,
    final_bn=False,
    text="""Standard ResNet-18 (BasicBlock, [2, 2, 2, 2]), CIFAR variant.

    Stem conv3x3(64) -> BN -> ReLU, four stages of two BasicBlocks
    (64/128/256/512 channels, strides 1/2/2/2), global average pooling
    (512-d `"penultimate"`) and a linear classifier. 11,173,962 trainable
    parameters for 10 classes. This is *not* the network the paper's Bench
    tables call "ResNet-18" (see `resnet18_bottleneck`).

    Args:
{common_args}
""",
    example='keras_rpat.models.get("resnet18", num_classes=10)',
    references=(PAPER, HE_RESNET),
)

resnet18_bottleneck = _variant(
    "resnet18_bottleneck",
    _bottleneck_block,
    stem_bn=True,
    final_bn=False,
    text="""The paper's Bench "ResNet-18": a Bottleneck ResNet with [2, 2, 2, 2].

    The network used for Tables 1, 2 and 5 and Figures 2 and 4
    (`RPAT_Benchmarks/models/resnet.py::resnet18`): stem conv3x3(64) -> BN ->
    ReLU, four stages of two Bottleneck blocks (output 256/512/1024/2048
    channels, strides 1/2/2/2), global average pooling (2048-d
    `"penultimate"`), linear classifier. 13,958,986 trainable parameters for
    10 classes.

    Args:
{common_args}
""",
    example='keras_rpat.models.get("resnet18_bottleneck", num_classes=100)',
    references=(PAPER, HE_RESNET),
)

preact_resnet18 = _variant(
    "preact_resnet18",
    _preact_block,
    stem_bn=False,
    final_bn=True,
    text="""PreActResNet-18 of the SOTAs pipeline (Tables 3 and 6).

    `RPAT_SOTAs/networks/preactresnet.py`: stem conv3x3(64) without BN/ReLU,
    four stages of two pre-activation blocks (64/128/256/512, strides
    1/2/2/2; projection shortcuts are a 1x1 conv of the pre-activated input,
    without BN), final BN -> ReLU -> global average pooling (512-d
    `"penultimate"`) -> linear. 11,172,170 trainable parameters for 10
    classes. The SOTAs pipeline uses `normalize="cifar10"`.

    Args:
{common_args}
""",
    example='keras_rpat.models.get("preact_resnet18", normalize="cifar10")',
    references=(PAPER, HE_PREACT),
)

preact_resnet18_robustbench = _variant(
    "preact_resnet18_robustbench",
    _preact_block_input_shortcut,
    stem_bn=False,
    final_bn=False,
    text="""RobustBench's default `PreActResNet18()` (`PreActResNet(PreActBlock, [2, 2, 2, 2])`).

    The network of Andriushchenko & Flammarion 2020 on the leaderboard. As
    `preact_resnet18` but for two things: a projection shortcut is the 1x1
    convolution of the block's *input* (not of its pre-activation), and no
    BN -> ReLU precedes the pooling (the last block's sum is pooled). Same
    layer names (`conv1`, `layer1_0_bn1`, ..., `linear`) without `bn`.
    11,171,146 trainable parameters for 10 classes.

    Args:
{common_args}
""",
    example='keras_rpat.models.get("preact_resnet18_robustbench")',
    references=(
        'Andriushchenko & Flammarion, "Understanding and Improving Fast Adversarial Training", NeurIPS 2020.',
        HE_PREACT,
    ),
)
