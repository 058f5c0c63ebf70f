"""Plain-PyTorch reference models and the authors' training step, for benchmarks.

The modules (tests/torch_reference_models.py) follow docs/algorithms.md#architectures; the
parity tests in tests/test_models.py check keras_rpat.models against them. `reference_step` is the
authors' PGD-AT + RPAT step: eager, fp32, NCHW, `torch.autograd.grad` for the
attack (eval-mode BatchNorm), three separate train-mode forwards, `F.mse_loss`,
`torch.optim.SGD(0.1, momentum=0.9, weight_decay=5e-4)`.
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from torch_reference_models import (  # noqa: E402
    TorchBasicBlock,
    TorchBottleneck,
    TorchPreActBlock,
    TorchResNet,
    TorchWideResNet,
)


def build(name, num_classes=10):
    """A reference module by keras_rpat model name."""
    if name == "resnet18":
        return TorchResNet(TorchBasicBlock, num_classes)
    if name == "resnet18_bottleneck":
        return TorchResNet(TorchBottleneck, num_classes)
    if name == "preact_resnet18":
        return TorchResNet(TorchPreActBlock, num_classes, preact=True)
    if name == "wide_resnet34_10":
        return TorchWideResNet(34, 10, num_classes)
    if name == "small_cnn":
        return torch_small_cnn(num_classes)
    raise ValueError(f"No reference module for {name!r}.")


def torch_small_cnn(num_classes=10, widths=(8, 16, 32)):
    """keras_rpat.models.small_cnn: three conv3x3 -> BN -> ReLU blocks (strides 1, 2, 2), global
    average pooling and a linear classifier (the benchmarks' tiny model, for tests)."""
    layers, channels = [], 3
    for width, stride in zip(widths, (1, 2, 2)):
        layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def make_reference_step(model, epsilon=8 / 255, step_size=2 / 255, num_steps=10, alpha=0.5, weight=1.0):
    """Returns `step(x, y)`: one PGD-10 + RPAT update of `model` (authors' style)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        model.eval()
        delta = torch.empty_like(x).uniform_(-epsilon, epsilon)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(num_steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, [delta])
            delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        model.train()
        r = 1.0 - alpha
        z_adv = model(x_adv)
        z_int = model(r * x + (1 - r) * x_adv)
        z_cln = model(x)
        loss = F.cross_entropy(z_adv, y) + weight * F.mse_loss(z_int, r * z_cln + (1 - r) * z_adv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step
