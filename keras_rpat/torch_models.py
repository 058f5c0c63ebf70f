"""The paper's and RobustBench's networks as plain PyTorch modules, and PyTorch checkpoint files.

Importing this module imports torch, never Keras: a user (or RobustBench-style
evaluation code) can load a `state_dict` written by `keras-rpat export
--format torch` with `strict=True` without installing Keras:

```python
from keras_rpat import torch_models

net = torch_models.get("preact_resnet18", num_classes=10, normalize="cifar10")
net.load_state_dict(torch_models.load_state_dict("model.pt"), strict=True)
logits = net(images)  # NCHW, pixels in [0, 1]
```

The parameter names are those of the reference code bases: RPAT_Benchmarks
and RPAT_SOTAs (`conv1`, `layer1.0.shortcut.0`, `linear`), TRADES / MART /
RobustBench for WideResNets (`block1.layer.0.convShortcut`, `fc`, and with
`sub_block1=True` the unused `sub_block1` group), RobustBench's
`dm_wide_resnet.py` for DeepMind's networks (`init_conv`,
`layer.0.block.0.batchnorm_0`, `logits`; `conv_2d`, `layer_0.0.conv_2d_1`).
So a `state_dict` of RobustBench's module loads into the module here, and
back, with `strict=True`. Input normalization (`normalize="cifar10"`, and
DeepMind's mean and std) is a non-persistent buffer, so it does not appear in
the `state_dict` (as in RobustBench).
"""

import torch
import torch.nn.functional as F
from torch import nn

from keras_rpat import _io

__all__ = ["get", "list_models", "load_arrays", "load_state_dict", "save_state_dict", "unwrap_checkpoint"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_NAMED_STATISTICS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

# Keys under which training scripts store the weights in a checkpoint dict ("last": the files of RobustBench's
# Andriushchenko2020Understanding and Kireev2021Effectiveness hold "last" and "best"; RobustBench loads "last").
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state", "last")


def _conv(in_planes, out_planes, kernel_size, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


class BasicBlock(nn.Module):
    """ResNet BasicBlock; projection shortcut `shortcut.0` (conv) + `shortcut.1` (BN)."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = _conv(in_planes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(_conv(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """The Bench ResNet-18's block: 1x1 -> 3x3 (stride) -> 1x1 (4x), projection with BN."""

    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = _conv(in_planes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, 4 * planes, 1)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(_conv(in_planes, 4 * planes, 1, stride), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """SOTAs pre-activation block: the projection (`shortcut.0`, no BN) takes the pre-activated input.

    RobustBench's `PreActBlockV2`; with `shortcut_on_input=True` its `PreActBlock`
    (`InputShortcutPreActBlock`), whose projection takes the block's input.
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut_on_input=False):
        super().__init__()
        self.shortcut_on_input = shortcut_on_input
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv(in_planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.projection = stride != 1 or in_planes != planes
        if self.projection:
            self.shortcut = nn.Sequential(_conv(in_planes, planes, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(x if self.shortcut_on_input else out) if self.projection else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class InputShortcutPreActBlock(PreActBlock):
    """RobustBench's `PreActBlock` (of its `PreActResNet18()`): the projection takes the block's input."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__(in_planes, planes, stride, shortcut_on_input=True)


class ResNet(nn.Module):
    """Four stages of two blocks; `preact=True` is the SOTAs PreActResNet (no stem BN, final `bn`).

    `bn_before_fc=False` drops the final `bn` of a PreActResNet (RobustBench's default).
    """

    def __init__(self, block, num_classes=10, preact=False, stem_stride=1, normalize=None, bn_before_fc=True):
        super().__init__()
        _set_normalization(self, normalize)
        self.preact = preact
        self.bn_before_fc = preact and bn_before_fc
        self.conv1 = _conv(3, 64, 3, stem_stride)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for stage, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            blocks = []
            for block_stride in (stride, 1):
                blocks.append(block(in_planes, planes, block_stride))
                in_planes = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        if self.bn_before_fc:
            self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.conv1(_normalized(self, x))
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class WideBasic(nn.Module):
    """WideResNet block (TRADES naming: `bn1`, `conv1`, `bn2`, `conv2`, `convShortcut`)."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv(in_planes, out_planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = _conv(out_planes, out_planes, 3)
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = _conv(in_planes, out_planes, 1, stride)

    def forward(self, x):
        if self.equal_in_out:
            out = self.conv1(F.relu(self.bn1(x)))
            shortcut = x
        else:
            x = F.relu(self.bn1(x))
            out = self.conv1(x)
            shortcut = self.convShortcut(x)
        return shortcut + self.conv2(F.relu(self.bn2(out)))


class NetworkBlock(nn.Module):
    def __init__(self, num_blocks, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasic(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-`depth`-`widen_factor` (`block1..3`, final `bn1`, classifier `fc`).

    RobustBench's `WideResNet`, with its `sub_block1` (a group of `block1`'s shape that `forward`
    never calls: TRADES' and MART's layout) and `bias_last` (a classifier bias) options.
    """

    def __init__(
        self, depth=34, widen_factor=10, num_classes=10, stem_stride=1, normalize=None, sub_block1=False, bias_last=True
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"`depth - 4` must be a positive multiple of 6. Received: depth={depth}")
        _set_normalization(self, normalize)
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv(3, widths[0], 3, stem_stride)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(_normalized(self, x)))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DMBlock(nn.Module):
    """DeepMind's WideResNet `_Block`; a stride-2 convolution pads only after the image, as there."""

    def __init__(self, in_planes, out_planes, stride, activation_fn=nn.SiLU):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation_fn()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation_fn()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x):
        activated = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(_dm_pad(activated, self._stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return (self.shortcut(activated) if self.has_shortcut else x) + out


class DMBlockGroup(nn.Module):
    def __init__(self, num_blocks, in_planes, out_planes, stride, activation_fn=nn.SiLU):
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation_fn)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x):
        return self.block(x)


class DMWideResNet(nn.Module):
    """RobustBench's `DMWideResNet` (`init_conv`, `layer.0..2`, `batchnorm`, `logits`); normalises inside."""

    def __init__(self, depth=28, width=10, num_classes=10, activation="silu", stem_stride=1, normalize="auto"):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"`depth - 4` must be a positive multiple of 6. Received: depth={depth}")
        _set_normalization(self, _dm_statistics(normalize, num_classes))
        activation_fn = _dm_activation(activation)
        num_blocks = (depth - 4) // 6
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.init_conv = _conv(3, channels[0], 3, stem_stride)
        self.layer = nn.Sequential(
            *[
                DMBlockGroup(num_blocks, channels[g], channels[g + 1], stride, activation_fn)
                for g, stride in enumerate((1, 2, 2))
            ]
        )
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = activation_fn()
        self.logits = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        out = self.layer(self.init_conv(_normalized(self, x)))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DMPreActBlock(nn.Module):
    """DeepMind's `_PreActBlock`: the projection is a 3x3 convolution of the block's (padded) input."""

    def __init__(self, in_planes, out_planes, stride, activation_fn=nn.SiLU):
        super().__init__()
        self._stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation_fn()
        self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation_fn()
        self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = stride != 1 or in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)

    def forward(self, x):
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(_dm_pad(x, self._stride)) if self.has_shortcut else x
        out = self.conv_2d_1(_dm_pad(out, self._stride))
        return self.conv_2d_2(self.relu_1(self.batchnorm_1(out))) + shortcut


class DMPreActResNet(nn.Module):
    """RobustBench's `DMPreActResNet(depth=18)` (`conv_2d`, `layer_0..3`, `batchnorm`, `logits`)."""

    def __init__(self, num_classes=10, activation="silu", stem_stride=1, normalize="auto"):
        super().__init__()
        _set_normalization(self, _dm_statistics(normalize, num_classes))
        activation_fn = _dm_activation(activation)
        self.conv_2d = _conv(3, 64, 3, stem_stride)
        in_planes = 64
        for stage, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            blocks = [
                DMPreActBlock(in_planes, planes, stride, activation_fn),
                DMPreActBlock(planes, planes, 1, activation_fn),
            ]
            setattr(self, f"layer_{stage}", nn.Sequential(*blocks))
            in_planes = planes
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = activation_fn()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv_2d(_normalized(self, x))
        out = self.layer_3(self.layer_2(self.layer_1(self.layer_0(out))))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _dm_pad(x, stride):
    """DeepMind's padding before a 3x3 convolution: 1 on every side, or only after the image for stride 2."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    if stride == 2:
        return F.pad(x, (0, 1, 0, 1))
    raise ValueError(f"Unsupported stride. Received: stride={stride}")


def _dm_activation(activation):
    activations = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU}
    if activation not in activations:
        raise ValueError(f'`activation` must be "silu" or "relu". Received: activation={activation!r}')
    return activations[activation]


def _dm_statistics(normalize, num_classes):
    """DeepMind's networks hold the dataset's statistics: `"auto"` is CIFAR-100's for 100 classes, else CIFAR-10's."""
    if isinstance(normalize, str) and normalize.lower() == "auto":
        return "cifar100" if num_classes == 100 else "cifar10"
    return normalize


class SmallCNN(nn.Module):
    """`keras_rpat.models.small_cnn`: three conv3x3-BN-ReLU blocks (strides 1, 2, 2), `linear`."""

    def __init__(self, num_classes=10, widths=(8, 16, 32), stem_stride=1, normalize=None):
        super().__init__()
        _set_normalization(self, normalize)
        in_planes = 3
        for index, (width, stride) in enumerate(zip(widths, (stem_stride, 2, 2)), start=1):
            setattr(self, f"conv{index}", _conv(in_planes, width, 3, stride))
            setattr(self, f"bn{index}", nn.BatchNorm2d(width))
            in_planes = width
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = _normalized(self, x)
        for index in (1, 2, 3):
            out = F.relu(getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _set_normalization(module, normalize):
    if normalize is None:
        module.mean = None
        return
    if isinstance(normalize, str):
        key = normalize.lower().replace("-", "").replace("_", "")
        if key not in _NAMED_STATISTICS:
            raise ValueError(
                f'`normalize` must be None, "cifar10", "cifar100" or a (mean, std) pair. Received: {normalize!r}'
            )
        normalize = _NAMED_STATISTICS[key]
    mean, std = normalize
    # torch's default dtype, as RobustBench's buffers (float64 ones for a float64 module).
    module.register_buffer(
        "mean", torch.tensor(mean, dtype=torch.get_default_dtype()).view(1, -1, 1, 1), persistent=False
    )
    module.register_buffer(
        "std", torch.tensor(std, dtype=torch.get_default_dtype()).view(1, -1, 1, 1), persistent=False
    )


def _normalized(module, x):
    return x if module.mean is None else (x - module.mean) / module.std


_BUILDERS = {
    "resnet18": lambda **kw: ResNet(BasicBlock, **kw),
    "resnet18_bottleneck": lambda **kw: ResNet(Bottleneck, **kw),
    "preact_resnet18": lambda **kw: ResNet(PreActBlock, preact=True, **kw),
    "wide_resnet34_10": lambda **kw: WideResNet(34, 10, **kw),
    "wide_resnet28_10": lambda **kw: WideResNet(28, 10, **kw),
    "wide_resnet": WideResNet,
    "small_cnn": SmallCNN,
    "preact_resnet18_robustbench": lambda **kw: ResNet(InputShortcutPreActBlock, preact=True, bn_before_fc=False, **kw),
    "dm_wide_resnet": DMWideResNet,
    "dm_wide_resnet28_10": lambda **kw: DMWideResNet(28, 10, **kw),
    "dm_wide_resnet34_10": lambda **kw: DMWideResNet(34, 10, **kw),
    "dm_wide_resnet34_20": lambda **kw: DMWideResNet(34, 20, **kw),
    "dm_wide_resnet70_16": lambda **kw: DMWideResNet(70, 16, **kw),
    "dm_preact_resnet18": DMPreActResNet,
}


def list_models():
    """The names `get` accepts: those of `keras_rpat.models.list_models()` plus `"wide_resnet"`."""
    return sorted(_BUILDERS)


def get(name, num_classes=10, stem_stride=1, **options):
    """Builds the PyTorch module of `keras_rpat.models.get(name, ...)` (NCHW input, pixels in [0, 1]).

    Args:
        name: a canonical name of `list_models()` (`keras_rpat.models.canonical_name`
            resolves aliases).
        num_classes, stem_stride: as in `keras_rpat.models.get`.
        **options: `normalize` as in `keras_rpat.models.get` (the default is
            the network's: none, or the dataset's statistics for DeepMind's
            networks); `depth` and `widen_factor` for `"wide_resnet"`,
            `sub_block1` and `bias_last` for the WideResNets, `depth`,
            `width` and `activation` for `"dm_wide_resnet"`, `activation`
            for DeepMind's networks, `widths` for `"small_cnn"`.

    Example:

    >>> net = keras_rpat.torch_models.get("wide_resnet34_10", normalize="cifar10")
    >>> trades = keras_rpat.torch_models.get("wide_resnet34_10", sub_block1=True)  # TRADES' keys
    >>> gowal = keras_rpat.torch_models.get("dm_wide_resnet70_16")  # CIFAR-10 statistics inside
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}. Valid: {', '.join(list_models())}.")
    return _BUILDERS[name](num_classes=num_classes, stem_stride=stem_stride, **options)


def unwrap_checkpoint(checkpoint):
    """The `state_dict` inside a checkpoint: itself, or under one of `CHECKPOINT_KEYS` (`{"state_dict": ...}`)."""
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"A PyTorch checkpoint must be a state_dict (a dict of tensors). Received: {type(checkpoint).__name__}"
        )
    if any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    for key in CHECKPOINT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return unwrap_checkpoint(checkpoint[key])
    raise ValueError(
        "The checkpoint holds no tensors and none of the keys "
        f"{', '.join(CHECKPOINT_KEYS)}. Received keys: {', '.join(map(str, list(checkpoint)[:10]))}"
    )


def load_state_dict(path):
    """Reads a PyTorch checkpoint file (tensors only, `weights_only=True`) and returns its `state_dict`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"No PyTorch checkpoint at {path}.") from None
    except Exception as e:  # noqa: BLE001  (pickle errors of every kind: say what the file is not)
        # torch's first sentence only: the rest advises `weights_only=False`, which keras_rpat never uses.
        reason = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else ""
        raise ValueError(
            f"Could not read {path} as a PyTorch checkpoint of tensors ({type(e).__name__}: {reason}). "
            "Save the weights with torch.save(model.state_dict(), path)."
        ) from None
    return unwrap_checkpoint(checkpoint)


def load_arrays(module, arrays):
    """`module.load_state_dict` from `{key: numpy array}`, with `strict=True`."""
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, strict=True)
    return module


def save_state_dict(arrays, path):
    """Writes `{key: numpy array}` as a PyTorch `state_dict` file (`torch.save`, atomically)."""
    with _io.atomic_path(path, suffix=".pt") as tmp:
        torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, tmp)
