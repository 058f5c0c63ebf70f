"""Tests for keras_rpat.models and keras_rpat.layers.

Parameter counts are the ones of docs/algorithms.md#parameter-counts. Numerical parity is
checked against plain PyTorch modules written here from the specification
(docs/algorithms.md#architectures), with the Keras weights copied into them.
"""

import ast
import pathlib

import keras_rpat  # noqa: F401  (sets the default backend before keras)

import keras
import numpy as np
import pytest
import torch
from torch import nn

from keras_rpat import layers as rpat_layers
from keras_rpat import models
from keras_rpat import torch_models
from testing import float64_precision

# Keras' torch backend converts tensors with `np.array(tensor)`, which NumPy 2
# reports for torch tensors; it is not about this code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _rel_err(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.max(np.abs(expected)), 1e-12)
    return float(np.max(np.abs(actual - expected)) / scale)


def _randomize_batchnorm(model, seed=0):
    """Non-trivial BN parameters and statistics, so inference mode is tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, rpat_layers.BatchNorm):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype("float32"),
                    rng.normal(0.0, 0.1, c).astype("float32"),
                    rng.normal(0.0, 0.1, c).astype("float32"),
                    rng.uniform(0.5, 1.5, c).astype("float32"),
                ]
            )


def _bn_state(model):
    return {
        layer.name: [np.array(w) for w in layer.get_weights()[2:]]
        for layer in model.layers
        if isinstance(layer, rpat_layers.BatchNorm)
    }


def _set_bn_state(model, state):
    for name, (mean, var) in state.items():
        layer = model.get_layer(name)
        gamma, beta = layer.get_weights()[:2]
        layer.set_weights([gamma, beta, mean, var])


# ----------------------------------------------------------------------------
# Parameter counts (docs/algorithms.md#parameter-counts)
# ----------------------------------------------------------------------------

PARAM_COUNTS = {
    # name: ({num_classes: trainable}, BN buffers)
    "resnet18_bottleneck": (
        {10: 13_958_986, 100: 14_143_396, 200: 14_348_296},
        30_848,
    ),
    "preact_resnet18": ({10: 11_172_170, 100: 11_218_340, 200: 11_269_640}, 7_808),
    "wide_resnet34_10": (
        {10: 46_160_474, 100: 46_218_164, 200: 46_282_264},
        22_432,
    ),
    "wide_resnet28_10": (
        {10: 36_479_194, 100: 36_536_884, 200: 36_600_984},
        17_952,
    ),
    "resnet18": ({10: 11_173_962, 100: 11_220_132, 200: 11_271_432}, 9_600),
}

PENULTIMATE_DIM = {
    "resnet18": 512,
    "resnet18_bottleneck": 2048,
    "preact_resnet18": 512,
    "wide_resnet34_10": 640,
    "wide_resnet28_10": 640,
}
# Stage before the last one on a 32x32 input: (height, width, channels).
THIRD_TO_LAST_MAP = {
    "resnet18": (8, 8, 256),
    "resnet18_bottleneck": (8, 8, 1024),
    "preact_resnet18": (8, 8, 256),
    "wide_resnet34_10": (16, 16, 320),
    "wide_resnet28_10": (16, 16, 320),
}


@pytest.mark.parametrize("num_classes", [10, 100, 200])
@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name, num_classes):
    trainable, buffers = PARAM_COUNTS[name]
    model = models.get(name, num_classes=num_classes)
    assert model.name == name
    assert _count(model.trainable_weights) == trainable[num_classes]
    assert _count(model.non_trainable_weights) == buffers
    assert model.count_params() == trainable[num_classes] + buffers
    # The feature layers exist, with the documented shapes.
    assert model.get_layer("logits").output.shape == (None, num_classes)
    assert model.get_layer("penultimate").output.shape == (
        None,
        PENULTIMATE_DIM[name],
    )
    assert model.get_layer("third_to_last").output.shape == (
        None,
        int(np.prod(THIRD_TO_LAST_MAP[name])),
    )
    # Convolutions are bias-free, the classifier has one.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
    assert model.get_layer("logits").use_bias


def test_small_cnn_is_small():
    model = models.get("small_cnn")
    assert _count(model.trainable_weights) == 6_418
    assert model.get_layer("penultimate").output.shape == (None, 32)
    assert model.get_layer("third_to_last").output.shape == (None, 16 * 16 * 16)


def test_stem_stride_two_on_tiny_imagenet():
    model = models.get(
        "resnet18_bottleneck",
        num_classes=200,
        input_shape=(64, 64, 3),
        data_format="channels_last",
        stem_stride=2,
    )
    trainable, buffers = PARAM_COUNTS["resnet18_bottleneck"]
    assert _count(model.trainable_weights) == trainable[200]
    assert _count(model.non_trainable_weights) == buffers
    # 64 -> 32 after the stem, so the maps are the CIFAR ones.
    assert model.get_layer("third_to_last").output.shape == (None, 8 * 8 * 1024)
    assert model.output.shape == (None, 200)


# ----------------------------------------------------------------------------
# Registry and argument validation
# ----------------------------------------------------------------------------


def test_list_models():
    assert models.list_models() == [
        "dm_preact_resnet18",
        "dm_wide_resnet",
        "dm_wide_resnet28_10",
        "dm_wide_resnet34_10",
        "dm_wide_resnet34_20",
        "dm_wide_resnet70_16",
        "preact_resnet18",
        "preact_resnet18_robustbench",
        "resnet18",
        "resnet18_bottleneck",
        "small_cnn",
        "wide_resnet28_10",
        "wide_resnet34_10",
    ]


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("preactresnet18", "preact_resnet18"),
        ("PreActResNet-18", "preact_resnet18"),
        ("wrn34_10", "wide_resnet34_10"),
        ("WRN-34-10", "wide_resnet34_10"),
        ("wrn28_10", "wide_resnet28_10"),
        ("wideresnet28_10", "wide_resnet28_10"),
        ("ResNet18", "resnet18"),
        ("resnet18-bottleneck", "resnet18_bottleneck"),
        ("small-cnn", "small_cnn"),
        ("dm_wideresnet_28_10", "dm_wide_resnet28_10"),
        ("DM-WRN-70-16", "dm_wide_resnet70_16"),
        ("DMWideResNet", "dm_wide_resnet"),
        ("DMPreActResNet18", "dm_preact_resnet18"),
        ("robustbench_preact_resnet18", "preact_resnet18_robustbench"),
    ],
)
def test_aliases(alias, canonical):
    assert models.canonical_name(alias) == canonical


def test_get_passes_options():
    model = models.get("SmallCNN", num_classes=3, widths=(2, 3, 4), normalize=None)
    assert model.name == "small_cnn"
    assert model.get_layer("penultimate").output.shape == (None, 4)
    assert model.output.shape == (None, 3)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown model name") as info:
        models.get("resnet1000")
    for name in models.list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("num_classes", [1, 0, -1, 2.5, "10", True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 2"):
        models.get("small_cnn", num_classes=num_classes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stem_stride": 0}, "`stem_stride`"),
        ({"data_format": "NHWC"}, "`data_format`"),
        ({"input_shape": (32, 32)}, "`input_shape`"),
        ({"input_shape": (None, None, 3)}, "`input_shape`"),
        ({"normalize": "imagenet"}, "`normalize`"),
        ({"normalize": (0.5,)}, "`normalize`"),
        ({"widths": (8, 16)}, "`widths`"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.get("small_cnn", **kwargs)


def test_bad_wide_resnet_depth():
    with pytest.raises(ValueError, match="`depth`"):
        models.wide_resnet(depth=12, widen_factor=1)
    with pytest.raises(ValueError, match="`widen_factor`"):
        models.wide_resnet(depth=10, widen_factor=0)


def test_normalize_needs_matching_channels():
    with pytest.raises(ValueError, match="3 channel statistics"):
        models.get("small_cnn", input_shape=(32, 32, 1), normalize="cifar10")


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------


def test_input_normalization():
    mean = np.array(rpat_layers.CIFAR10_MEAN, "float32")
    std = np.array(rpat_layers.CIFAR10_STD, "float32")
    x = np.random.default_rng(0).uniform(size=(2, 5, 4, 3)).astype("float32")

    layer = rpat_layers.InputNormalization(data_format="channels_last")
    np.testing.assert_allclose(_np(layer(x)), (x - mean) / std, rtol=1e-6)
    assert layer.weights == []

    layer = rpat_layers.InputNormalization(data_format="channels_first")
    x_cf = x.transpose(0, 3, 1, 2)
    expected = (x_cf - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(_np(layer(x_cf)), expected, rtol=1e-6)

    custom = rpat_layers.InputNormalization(mean=0.5, std=0.25)
    np.testing.assert_allclose(_np(custom(x)), (x - 0.5) / 0.25, rtol=1e-6)

    config = layer.get_config()
    clone = rpat_layers.InputNormalization.from_config(config)
    assert clone.mean == layer.mean and clone.std == layer.std
    assert clone.data_format == "channels_first"

    with pytest.raises(ValueError, match="`std` must be > 0"):
        rpat_layers.InputNormalization(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="same length"):
        rpat_layers.InputNormalization(mean=(0.1, 0.2), std=(0.2, 0.2, 0.2))


def test_normalize_adds_no_weights():
    plain = models.get("small_cnn")
    normalized = models.get("small_cnn", normalize="cifar10")
    custom = models.get("small_cnn", normalize=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    assert normalized.layers[1].name == "input_normalization"
    assert isinstance(normalized.layers[1], rpat_layers.InputNormalization)
    assert custom.get_layer("input_normalization").std == (0.2, 0.2, 0.2)
    assert normalized.count_params() == plain.count_params()
    assert custom.count_params() == plain.count_params()


@pytest.mark.parametrize("axis", [-1, 1])
def test_batchnorm_matches_torch_formulas(axis):
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(4, 3, 5, 6)).astype("float32")
    layer = rpat_layers.BatchNorm(axis=axis)
    assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    layer.build(x.shape)
    channels = x.shape[axis]
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    layer.set_weights([gamma, beta, np.zeros(channels, "float32"), np.ones(channels, "float32")])
    out = _np(layer(x, training=True))

    reduce = tuple(a for a in range(4) if a != axis % 4)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    x64 = x.astype("float64")
    mean = x64.mean(axis=reduce)
    var = x64.var(axis=reduce)
    n = x.size // channels
    expected = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * gamma.reshape(shape) + beta.reshape(
        shape
    )
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    moving_mean, moving_var = layer.get_weights()[2:]
    np.testing.assert_allclose(moving_mean, 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moving_var, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)

    # Same numbers as torch.nn.BatchNorm2d (channels are axis 1 there).
    bn = torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    x_t = torch.from_numpy(np.moveaxis(x, axis, 1).copy())
    ref = np.moveaxis(bn(x_t).detach().numpy(), 1, axis)
    assert _rel_err(out, ref) < 1e-5
    assert _rel_err(moving_mean, bn.running_mean.numpy()) < 1e-5
    assert _rel_err(moving_var, bn.running_var.numpy()) < 1e-5

    # Inference uses the moving statistics.
    out = _np(layer(x, training=False))
    bn.eval()
    assert _rel_err(out, np.moveaxis(bn(x_t).detach().numpy(), 1, axis)) < 1e-5


@pytest.mark.parametrize("lowered", [False, True] if keras.config.backend() == "torch" else [False])
def test_batchnorm_momentum_and_epsilon_are_used(lowered):
    """Non-default values against torch.nn.BatchNorm2d (Keras momentum 0.6 is torch's 0.4), on the
    layer and in the fast path's lowering."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 0.2, size=(4, 5, 6, 3)).astype("float32")  # a small variance: epsilon matters
    inputs = keras.Input((5, 6, 3))
    model = keras.Model(inputs, rpat_layers.BatchNorm(momentum=0.6, epsilon=0.05)(inputs))
    forward = model
    if lowered:
        from keras_rpat.fast_path import lowering

        forward = lowering.lower(model)
    out = _np(forward(keras.ops.convert_to_tensor(x), training=True))
    bn = torch.nn.BatchNorm2d(3, momentum=0.4, eps=0.05)
    x_t = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    assert _rel_err(out, np.moveaxis(bn(x_t).detach().numpy(), 1, -1)) < 1e-5
    moving_mean, moving_var = [_np(w) for w in model.non_trainable_weights]
    assert _rel_err(moving_mean, bn.running_mean.numpy()) < 1e-5
    assert _rel_err(moving_var, bn.running_var.numpy()) < 1e-5
    bn.eval()
    out = _np(forward(keras.ops.convert_to_tensor(x), training=False))
    assert _rel_err(out, np.moveaxis(bn(x_t).detach().numpy(), 1, -1)) < 1e-5


@pytest.mark.parametrize("training", [True, False])
@float64_precision()  # on jax, float64 exists only with jax_enable_x64
def test_batchnorm_computes_float64_inputs_in_float64(training):
    # keras.layers.BatchNormalization computes float64 inputs in float32 (1e-7).
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, size=(4, 5, 5, 3))
    layer = rpat_layers.BatchNorm(dtype="float64")
    layer.build(x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 1.5, 3)
    layer.set_weights([gamma, beta, mean, var])
    out = _np(layer(x, training=training))
    if training:
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    expected = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_config_and_unsupported_options():
    layer = rpat_layers.BatchNorm(axis=1, momentum=0.8, name="bn")
    config = layer.get_config()
    assert config["momentum"] == 0.8 and config["epsilon"] == 1e-5
    clone = rpat_layers.BatchNorm.from_config(config)
    assert isinstance(clone, rpat_layers.BatchNorm)
    assert (clone.axis, clone.momentum, clone.epsilon) == (1, 0.8, 1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, rpat_layers.BatchNorm)

    with pytest.raises(ValueError, match="renormalization"):
        rpat_layers.BatchNorm(renorm=True)
    x = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match="masking"):
        rpat_layers.BatchNorm()(x, training=True, mask=np.ones((2,), bool))


def test_initializers():
    kernel = _np(rpat_layers.torch_kernel_initializer(seed=1)((3, 3, 64, 128)))
    bound = 1.0 / np.sqrt(3 * 3 * 64)
    assert np.abs(kernel).max() <= bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.02 * bound  # sampling: 73728 draws, sd of the std 0.1%

    bias_init = rpat_layers.TorchBiasUniform(512, seed=2)
    bias = _np(bias_init((1000,)))
    assert np.abs(bias).max() <= 1 / np.sqrt(512)
    assert bias.std() > 0.5 / np.sqrt(3 * 512)
    config = bias_init.get_config()
    assert config["fan_in"] == 512 and "minval" not in config
    clone = keras.initializers.deserialize(keras.initializers.serialize(bias_init))
    assert isinstance(clone, rpat_layers.TorchBiasUniform)
    assert clone.fan_in == 512 and clone.maxval == bias_init.maxval
    with pytest.raises(ValueError, match="`fan_in`"):
        rpat_layers.TorchBiasUniform(0)

    wrn = _np(rpat_layers.kaiming_normal_fan_out(seed=3)((3, 3, 64, 128)))
    assert abs(wrn.std() - np.sqrt(2.0 / (9 * 128))) < 0.02 * np.sqrt(2.0 / (9 * 128))  # sampling: sd of the std 0.3%
    assert abs(wrn.mean()) < 0.01  # sampling: the mean of 73728 N(0, 0.04^2) draws, sd 1.5e-4


def test_model_initialisation():
    resnet = models.get("small_cnn")
    bias = resnet.get_layer("logits").bias
    assert 0 < np.abs(_np(bias)).max() <= 1 / np.sqrt(32)
    wrn = models.wide_resnet(depth=10, widen_factor=1, num_classes=5)
    assert np.all(_np(wrn.get_layer("logits").bias) == 0)
    kernel = _np(wrn.get_layer("block2_layer_0_conv1").kernel)  # 3x3, 16->32
    assert abs(kernel.std() - np.sqrt(2 / (9 * 32))) < 0.15 * np.sqrt(2 / (9 * 32))


def test_no_backend_imports_in_library_modules():
    root = pathlib.Path(rpat_layers.__file__).parent
    filenames = ["layers.py", *(f"models/{p.name}" for p in sorted((root / "models").glob("*.py")))]
    assert "models/resnet.py" in filenames
    for filename in filenames:
        tree = ast.parse((root / filename).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("torch", "tensorflow"), filename


# ----------------------------------------------------------------------------
# PyTorch reference modules (written from docs/algorithms.md#architectures)
# ----------------------------------------------------------------------------


from torch_reference_models import (  # noqa: E402
    TorchBasicBlock,
    TorchBottleneck,
    TorchPreActBlock,
    TorchResNet,
    TorchWideResNet,
)


def _copy_keras_to_torch(kmodel, tmodel):
    """Copies every Keras weight into the module of the same (dotted) name."""
    copied = set()
    with torch.no_grad():
        for name, module in tmodel.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                continue
            kname = "logits" if name in ("linear", "fc", "logits") else name.replace(".", "_")
            layer = kmodel.get_layer(kname)
            weights = [torch.from_numpy(w) for w in layer.get_weights()]
            if isinstance(module, nn.Conv2d):
                (kernel,) = weights
                module.weight.copy_(kernel.permute(3, 2, 0, 1))  # HWIO -> OIHW
            elif isinstance(module, nn.BatchNorm2d):
                gamma, beta, mean, var = weights
                module.weight.copy_(gamma)
                module.bias.copy_(beta)
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
            else:
                kernel, bias = weights
                module.weight.copy_(kernel.T)
                module.bias.copy_(bias)
            copied.add(kname)
    expected = {layer.name for layer in kmodel.layers if layer.weights}
    assert copied == expected
    return {name.replace(".", "_"): m for name, m in tmodel.named_modules()}


PARITY_INPUT = dict(num_classes=7, input_shape=(16, 16, 3), data_format="channels_last")
PARITY_CASES = {
    # name: (Keras model, PyTorch reference, PyTorch stage before the last)
    "resnet18": (
        lambda: models.resnet18(**PARITY_INPUT),
        lambda: TorchResNet(TorchBasicBlock, 7),
        "layer3",
    ),
    "resnet18_bottleneck": (
        lambda: models.resnet18_bottleneck(**PARITY_INPUT),
        lambda: TorchResNet(TorchBottleneck, 7),
        "layer3",
    ),
    "preact_resnet18": (
        lambda: models.preact_resnet18(**PARITY_INPUT),
        lambda: TorchResNet(TorchPreActBlock, 7, preact=True),
        "layer3",
    ),
    # Depth 16 has both block kinds (projection and identity shortcut).
    "wide_resnet16_2": (
        lambda: models.wide_resnet(depth=16, widen_factor=2, **PARITY_INPUT),
        lambda: TorchWideResNet(16, 2, 7),
        "block2",
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
@float64_precision()
def test_torch_parity(case):
    """Logits, proxy features and BatchNorm statistics vs the plain-PyTorch module, in float64."""
    build_keras, build_torch, stage3 = PARITY_CASES[case]
    keras.utils.set_random_seed(0)
    kmodel = build_keras()
    _randomize_batchnorm(kmodel)
    tmodel = build_torch()
    torch_modules = _copy_keras_to_torch(kmodel, tmodel)

    x = np.random.default_rng(0).uniform(size=(4, 16, 16, 3))
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    assert next(tmodel.parameters()).dtype == torch.float64

    # Inference mode, plus the perception-proxy features.
    captured = {}
    hooks = [
        getattr(tmodel, stage3).register_forward_hook(lambda m, i, o: captured.__setitem__("third", o)),
        torch_modules["linear" if hasattr(tmodel, "linear") else "fc"].register_forward_hook(
            lambda m, i, o: captured.__setitem__("pen", i[0])
        ),
    ]
    tmodel.eval()
    with torch.no_grad():
        ref = tmodel(x_t).numpy()
    for hook in hooks:
        hook.remove()
    logits, penultimate, third = models.feature_model(kmodel)(x, training=False)
    assert _np(logits).dtype == np.float64
    assert _rel_err(_np(logits), ref) <= 1e-12
    assert _rel_err(_np(penultimate), captured["pen"].numpy()) <= 1e-12
    third_ref = captured["third"].numpy().transpose(0, 2, 3, 1).reshape(4, -1)
    assert _rel_err(_np(third), third_ref) <= 1e-12

    # Training mode: batch statistics, and the running-statistics update.
    tmodel.train()
    with torch.no_grad():
        ref = tmodel(x_t).numpy()
    out = _np(kmodel(x, training=True))
    assert _rel_err(out, ref) <= 1e-12
    for layer in kmodel.layers:
        if isinstance(layer, rpat_layers.BatchNorm):
            module = torch_modules[layer.name]
            mean, var = layer.get_weights()[2:]
            assert _rel_err(mean, module.running_mean.numpy()) <= 1e-12, layer.name
            assert _rel_err(var, module.running_var.numpy()) <= 1e-12, layer.name


# ----------------------------------------------------------------------------
# Data formats, features, serialization
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "builder, options",
    [
        # Stride-2 3x3 convs (symmetric padding), 1x1 stride-2 shortcuts, BN.
        (models.wide_resnet, {"depth": 10, "widen_factor": 1}),
        (models.small_cnn, {"normalize": "cifar10", "stem_stride": 2}),
    ],
)
def test_data_formats_agree(builder, options):
    # One forward: not chaotic, compared in float32 (TensorFlow's CPU convolution has no float64 NCHW kernel).
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
    last = builder(input_shape=(16, 16, 3), data_format="channels_last", **options)
    _randomize_batchnorm(last)
    first = builder(input_shape=(3, 16, 16), data_format="channels_first", **options)
    first.set_weights(last.get_weights())
    x_first = x.transpose(0, 3, 1, 2)
    for training in (False, True):
        out_last = _np(last(x, training=training))
        out_first = _np(first(x_first, training=training))
        assert _rel_err(out_first, out_last) <= 1e-4
    for a, b in zip(_bn_state(last).values(), _bn_state(first).values()):
        assert _rel_err(a[0], b[0]) <= 1e-5 and _rel_err(a[1], b[1]) <= 1e-5


@pytest.mark.parametrize("name", ["resnet18", "resnet18_bottleneck", "preact_resnet18"])
def test_feature_model_shapes(name):
    # Values are checked against PyTorch in `test_torch_parity`.
    model = models.get(name)
    features = models.feature_model(model)
    assert features.name == f"{name}_features"
    assert [tuple(t.shape) for t in features.outputs] == [
        (None, 10),
        (None, PENULTIMATE_DIM[name]),
        (None, int(np.prod(THIRD_TO_LAST_MAP[name]))),
    ]
    stage3 = "layer3_1_add" if name == "preact_resnet18" else "layer3_1_out"
    assert tuple(model.get_layer(stage3).output.shape[1:]) == THIRD_TO_LAST_MAP[name]


def test_feature_model_wide_resnet_shapes():
    model = models.wide_resnet(depth=10, widen_factor=10)
    outputs = models.feature_model(model, proxies=("second_to_last", "third_to_last"))
    assert [tuple(t.shape) for t in outputs.outputs] == [
        (None, 10),
        (None, 640),
        (None, 16 * 16 * 320),
    ]
    single = models.feature_model(model, proxies="penultimate")
    assert len(single.outputs) == 2


def test_feature_model_shares_state():
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn")
    features = models.feature_model(model)
    assert features.get_layer("conv1") is model.get_layer("conv1")
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    start = _bn_state(model)
    logits_a = _np(model(x, training=True))
    after_a = _bn_state(model)
    _set_bn_state(model, start)
    logits_b = _np(features(x, training=True)[0])
    after_b = _bn_state(model)
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-6, atol=1e-6)
    for name in after_a:
        np.testing.assert_allclose(after_a[name][0], after_b[name][0], rtol=1e-6)
        np.testing.assert_allclose(after_a[name][1], after_b[name][1], rtol=1e-6)
        assert not np.allclose(after_a[name][1], start[name][1])


def test_feature_model_errors():
    model = models.get("small_cnn")
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        models.feature_model(model, proxies=("layer9",))


def test_fit_updates_batchnorm_like_a_training_call():
    """The compiled (graph / jit) training path uses the same BN update."""
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn", normalize="cifar10")
    x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 10
    start = _bn_state(model)
    model(x, training=True)
    expected = _bn_state(model)
    _set_bn_state(model, start)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.train_on_batch(x, y)
    for name, (mean, var) in _bn_state(model).items():
        np.testing.assert_allclose(mean, expected[name][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, expected[name][1], rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn", num_classes=4, normalize="cifar10")
    _randomize_batchnorm(model)
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype("float32")
    path = tmp_path / "small_cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == "small_cnn"
    assert isinstance(loaded.get_layer("bn1"), rpat_layers.BatchNorm)
    assert isinstance(loaded.get_layer("input_normalization"), rpat_layers.InputNormalization)
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))
    np.testing.assert_array_equal(_np(loaded(x, training=True)), _np(model(x, training=True)))
    features = models.feature_model(loaded)
    assert tuple(features.outputs[2].shape) == (None, 16 * 16 * 16)


# ----------------------------------------------------------------------------
# RobustBench's networks (its code: torch_reference_models.py, second half)
# ----------------------------------------------------------------------------

import torch_reference_models as rb  # noqa: E402


def wide_resnet_parameters(depth, width, num_classes, bias_last=True):
    """Trainable parameters of a WideResNet (ours, RobustBench's and DeepMind's alike), counted by hand.

    Stem conv3x3 3->16; per group (16 -> 16k -> 32k -> 64k) a first block BN(in) conv3x3(in->out) BN(out)
    conv3x3(out->out) plus a 1x1 projection when the width changes, then n - 1 blocks of out channels;
    final BN and the linear classifier. For WRN-28-10 (n = 4): 432 + 1,640,672 + 6,968,000 + 27,862,400
    + 7,690 = 36,479,194.
    """
    n = (depth - 4) // 6
    channels = (16, 16 * width, 32 * width, 64 * width)
    total = 3 * 16 * 9
    for c_in, c_out in zip(channels, channels[1:]):
        total += 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0)
        total += (n - 1) * (4 * c_out + 18 * c_out * c_out)
    return total + 2 * channels[3] + channels[3] * num_classes + (num_classes if bias_last else 0)


def _rb_dm_wide_resnet(depth, width):
    return lambda c: rb.RBDMWideResNet(c, depth, width, rb.RBSwish)


# name: (RobustBench's module, {num_classes: trainable}, BatchNorm buffers), counted from RobustBench's
# definitions (written down here; the test recounts them from its code on the meta device).
ROBUSTBENCH_COUNTS = {
    "dm_wide_resnet28_10": (_rb_dm_wide_resnet(28, 10), {10: 36_479_194, 100: 36_536_884}, 17_952),
    "dm_wide_resnet34_10": (_rb_dm_wide_resnet(34, 10), {10: 46_160_474, 100: 46_218_164}, 22_432),
    "dm_wide_resnet34_20": (_rb_dm_wide_resnet(34, 20), {10: 184_531_674, 100: 184_646_964}, 44_832),
    "dm_wide_resnet70_16": (_rb_dm_wide_resnet(70, 16), {10: 266_796_506, 100: 266_888_756}, 78_880),
    "dm_preact_resnet18": (
        lambda c: rb.RBDMPreActResNet(c, 18, 0, rb.RBSwish),
        {10: 12_548_426, 100: 12_594_596},
        7_808,
    ),
    "preact_resnet18_robustbench": (rb.rb_preact_resnet18, {10: 11_171_146, 100: 11_217_316}, 6_784),
    "wide_resnet34_10(bias_last=False)": (
        lambda c: rb.RBWideResNet(34, c, 10, bias_last=False),
        {10: 46_160_464, 100: 46_218_064},
        22_432,
    ),
}


def _torch_counts(module):
    buffers = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in module.parameters()), buffers


@pytest.mark.parametrize("name", sorted(ROBUSTBENCH_COUNTS))
def test_robustbench_parameter_counts_from_its_definitions(name):
    build, trainable, buffers = ROBUSTBENCH_COUNTS[name]
    twin_name, _, option = name.partition("(")
    twin_options = {"bias_last": False} if option else {}
    for num_classes, count in trainable.items():
        with torch.device("meta"):  # shapes only: a WRN-70-16 costs nothing
            assert _torch_counts(build(num_classes)) == (count, buffers)
            twin = torch_models.get(twin_name, num_classes=num_classes, **twin_options)
        assert _torch_counts(twin) == (count, buffers)
        if "wide_resnet" in name:
            depth, width = (int(v) for v in twin_name.rpartition("resnet")[2].split("_"))
            assert wide_resnet_parameters(depth, width, num_classes, bias_last=not option) == count


def test_the_wide_resnet_formula_by_hand_and_against_the_keras_builders():
    assert wide_resnet_parameters(28, 10, 10) == 432 + 1_640_672 + 6_968_000 + 27_862_400 + 7_690 == 36_479_194
    # Both block kinds (identity and projection shortcut, widths 1 and 2), both families, without a bias.
    for depth, width in ((10, 1), (16, 2)):
        dm = models.get("dm_wide_resnet", depth=depth, width=width, num_classes=7)
        assert _count(dm.trainable_weights) == wide_resnet_parameters(depth, width, 7)
        ours = models.wide_resnet(depth=depth, widen_factor=width, num_classes=7, bias_last=False)
        assert _count(ours.trainable_weights) == wide_resnet_parameters(depth, width, 7, bias_last=False)
        assert ours.get_layer("logits").bias is None


@pytest.mark.parametrize("name", ["dm_wide_resnet28_10", "dm_preact_resnet18", "preact_resnet18_robustbench"])
def test_robustbench_keras_parameter_counts_and_feature_layers(name):
    _, trainable, buffers = ROBUSTBENCH_COUNTS[name]
    model = models.get(name)
    assert model.name == name
    assert (_count(model.trainable_weights), _count(model.non_trainable_weights)) == (trainable[10], buffers)
    penultimate, third = {
        "dm_wide_resnet28_10": (640, (16, 16, 320)),
        "dm_preact_resnet18": (512, (8, 8, 256)),
        "preact_resnet18_robustbench": (512, (8, 8, 256)),
    }[name]
    assert model.get_layer("penultimate").output.shape == (None, penultimate)
    assert model.get_layer("third_to_last").output.shape == (None, int(np.prod(third)))
    assert all(not layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


@pytest.mark.parametrize(
    "name, depth, width",
    [("dm_wide_resnet28_10", 28, 10), ("dm_wide_resnet34_10", 34, 10), ("dm_wide_resnet34_20", 34, 20)]
    + [("dm_wide_resnet70_16", 70, 16)],
)
def test_dm_wide_resnet_presets_are_their_size(name, depth, width, monkeypatch):
    # The large presets are counted on RobustBench's side above; here each builds `dm_wide_resnet` of its size
    # (a WRN-70-16 would take 1 GB and many seconds to build).
    from keras_rpat.models import dm_resnet

    calls = []
    monkeypatch.setattr(dm_resnet, "dm_wide_resnet", lambda *args, **kwargs: calls.append((args, kwargs)))
    models.get(name, num_classes=100, normalize=None)
    ((args, kwargs),) = calls
    assert args == (depth, width)
    assert kwargs["name"] == name and kwargs["num_classes"] == 100 and kwargs["normalize"] is None


def test_deepmind_networks_normalise_inside_with_the_dataset_statistics():
    cifar10 = models.dm_wide_resnet(depth=10, width=1)
    cifar100 = models.dm_wide_resnet(depth=10, width=1, num_classes=100)
    assert cifar10.layers[1].name == "input_normalization"
    layer = cifar10.get_layer("input_normalization")
    assert (layer.mean, layer.std) == (rb.RB_CIFAR10_MEAN, rb.RB_CIFAR10_STD)
    layer = cifar100.get_layer("input_normalization")
    assert (layer.mean, layer.std) == (rb.RB_CIFAR100_MEAN, rb.RB_CIFAR100_STD)
    mine = models.get("dm_wide_resnet", depth=10, width=1, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert mine.get_layer("input_normalization").std == (0.25, 0.25, 0.25)
    outside = models.get("dm_wide_resnet", depth=10, width=1, normalize=None)
    assert "input_normalization" not in [layer.name for layer in outside.layers]
    # The paper's networks still default to none, and take RobustBench's CIFAR-100 statistics by name.
    assert "input_normalization" not in [layer.name for layer in models.get("small_cnn").layers]
    layer = models.get("small_cnn", normalize="CIFAR-100").get_layer("input_normalization")
    assert (layer.mean, layer.std) == (rb.RB_CIFAR100_MEAN, rb.RB_CIFAR100_STD)
    assert (torch_models.CIFAR100_MEAN, torch_models.CIFAR100_STD) == (rb.RB_CIFAR100_MEAN, rb.RB_CIFAR100_STD)


def test_deepmind_network_arguments():
    relu = models.dm_wide_resnet(depth=10, width=1, activation="relu")
    assert isinstance(relu.get_layer("relu"), keras.layers.ReLU)
    assert models.dm_wide_resnet(depth=10, width=1).get_layer("relu").get_config()["activation"] == "silu"
    with pytest.raises(ValueError, match='`activation` must be "silu" or "relu". Received: activation=\'gelu\''):
        models.dm_preact_resnet18(activation="gelu")
    with pytest.raises(ValueError, match="`depth`.*Received: depth=12"):
        models.get("dm_wide_resnet", depth=12)
    with pytest.raises(ValueError, match="`width`"):
        models.get("dm_wide_resnet", depth=10, width=0)
    with pytest.raises(ValueError, match='`normalize` must be None, "cifar10", "cifar100"'):
        models.get("dm_wide_resnet", depth=10, width=1, normalize="imagenet")
    with pytest.raises(ValueError, match="`bias_last` must be True or False"):
        models.get("wide_resnet28_10", bias_last="no")


@float64_precision()
def test_dm_wide_resnet_parity_of_features_and_batchnorm_statistics():
    """Proxy features and the running statistics' update vs RobustBench's DMWideResNet, float64 (logits in both
    directions for every RobustBench family: test_torch_checkpoints.py). Depth 16 width 1: identity and projection
    shortcuts, stride-2 convolutions padded after the image."""
    name, options, stage3 = "dm_wide_resnet", {"depth": 16, "width": 1}, "layer.1"
    keras.utils.set_random_seed(0)
    kmodel = models.get(name, num_classes=7, data_format="channels_last", **options)
    _randomize_batchnorm(kmodel)
    tmodel = rb.RBDMWideResNet(7, 16, 1, rb.RBSwish)
    torch_modules = _copy_keras_to_torch(kmodel, tmodel)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3))
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    captured = {}
    tmodel.get_submodule(stage3).register_forward_hook(lambda m, i, o: captured.__setitem__("third", o))
    tmodel.get_submodule("logits").register_forward_hook(lambda m, i, o: captured.__setitem__("pen", i[0]))
    tmodel.eval()
    with torch.no_grad():
        ref = tmodel(x_t).numpy()
    logits, penultimate, third = models.feature_model(kmodel)(x, training=False)
    assert _rel_err(_np(logits), ref) <= 1e-12
    assert _rel_err(_np(penultimate), captured["pen"].numpy()) <= 1e-12
    assert _rel_err(_np(third), captured["third"].numpy().transpose(0, 2, 3, 1).reshape(2, -1)) <= 1e-12
    tmodel.train()
    with torch.no_grad():
        ref = tmodel(x_t).numpy()
    assert _rel_err(_np(kmodel(x, training=True)), ref) <= 1e-12
    for layer in kmodel.layers:
        if isinstance(layer, rpat_layers.BatchNorm):
            mean, var = layer.get_weights()[2:]
            assert _rel_err(mean, torch_modules[layer.name].running_mean.numpy()) <= 1e-12, layer.name
            assert _rel_err(var, torch_modules[layer.name].running_var.numpy()) <= 1e-12, layer.name
