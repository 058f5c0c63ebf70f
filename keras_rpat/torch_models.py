"""The paper's networks as plain PyTorch modules, and PyTorch checkpoint files.

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
RobustBench for WideResNets (`block1.layer.0.convShortcut`, `fc`). Input
normalization (`normalize="cifar10"`) is a non-persistent buffer, so it does
not appear in the `state_dict` (as in the SOTAs code, which normalizes outside
the network).
"""

import torch
import torch.nn.functional as F
from torch import nn

from keras_rpat import _io

__all__ = ["get", "list_models", "load_arrays", "load_state_dict", "save_state_dict", "unwrap_checkpoint"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

# Keys under which training scripts store the weights in a checkpoint dict.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")


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
    """SOTAs pre-activation block: the projection (`shortcut.0`, no BN) takes the pre-activated input."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv(in_planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.projection = stride != 1 or in_planes != planes
        if self.projection:
            self.shortcut = nn.Sequential(_conv(in_planes, planes, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.projection else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """Four stages of two blocks; `preact=True` is the SOTAs PreActResNet (no stem BN, final `bn`)."""

    def __init__(self, block, num_classes=10, preact=False, stem_stride=1, normalize=None):
        super().__init__()
        _set_normalization(self, normalize)
        self.preact = preact
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
        if preact:
            self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.conv1(_normalized(self, x))
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
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
    """WideResNet-`depth`-`widen_factor` (`block1..3`, final `bn1`, classifier `fc`)."""

    def __init__(self, depth=34, widen_factor=10, num_classes=10, stem_stride=1, normalize=None):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"`depth - 4` must be a positive multiple of 6. Received: depth={depth}")
        _set_normalization(self, normalize)
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv(3, widths[0], 3, stem_stride)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(_normalized(self, x)))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


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
        if normalize.lower().replace("-", "").replace("_", "") != "cifar10":
            raise ValueError(f'`normalize` must be None, "cifar10" or a (mean, std) pair. Received: {normalize!r}')
        normalize = (CIFAR10_MEAN, CIFAR10_STD)
    mean, std = normalize
    module.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)


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
}


def list_models():
    """The names `get` accepts: those of `keras_rpat.models.list_models()` plus `"wide_resnet"`."""
    return sorted(_BUILDERS)


def get(name, num_classes=10, stem_stride=1, normalize=None, **options):
    """Builds the PyTorch module of `keras_rpat.models.get(name, ...)` (NCHW input, pixels in [0, 1]).

    Args:
        name: a canonical name of `list_models()` (`keras_rpat.models.canonical_name`
            resolves aliases).
        num_classes, stem_stride, normalize: as in `keras_rpat.models.get`.
        **options: `depth` and `widen_factor` for `"wide_resnet"`, `widths`
            for `"small_cnn"`.

    Example:

    >>> net = keras_rpat.torch_models.get("wide_resnet34_10", normalize="cifar10")
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}. Valid: {', '.join(list_models())}.")
    return _BUILDERS[name](num_classes=num_classes, stem_stride=stem_stride, normalize=normalize, **options)


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
