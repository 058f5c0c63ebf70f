"""PyTorch checkpoints in (`models.from_torch`, `keras-rpat convert`) and out (`keras-rpat export`).

The checkpoints are written by plain PyTorch modules built here from the
specification (docs/algorithms.md#architectures, `torch_reference_models.py`) under the
key layout of each code base; after import the Keras model must give the same
logits (relative 1e-4) in inference and in training mode (batch statistics).
The shipped `keras_rpat.torch_models` are checked against the same references.
"""

import contextlib
import subprocess
import sys

import keras_rpat  # noqa: F401  (sets the default backend before keras)

import keras
import numpy as np
import pytest
import torch
from testing import BACKEND
from testing import invoke
from torch import nn
from torch_reference_models import TorchBasicBlock
from torch_reference_models import TorchBottleneck
from torch_reference_models import TorchNetworkBlock
from torch_reference_models import TorchPreActBlock
from torch_reference_models import TorchResNet
from torch_reference_models import TorchWideResNet

import torch_reference_models as rb
from keras_rpat import models
from keras_rpat import torch_models
from keras_rpat.cli import main
from testing import float64_precision

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SIZE = 8
NUM_CLASSES = 7
TOLERANCE = 1e-4


class TradesWideResNet(TorchWideResNet):
    """TRADES / MART `models/wideresnet.py` (and RobustBench with `sub_block1=True`): an unused `sub_block1`."""

    def __init__(self, depth, widen_factor, num_classes):
        super().__init__(depth, widen_factor, num_classes)
        self.sub_block1 = TorchNetworkBlock((depth - 4) // 6, 16, 16 * widen_factor, 1)


# architecture -> (the code base's module, the key layouts it is saved in)
# A layout is a key prefix ("module." is DataParallel's) or "no_batches_tracked".
ARCHS = {
    # RPAT_Benchmarks models/resnet.py::resnet18
    "resnet18_bottleneck": (lambda: TorchResNet(TorchBottleneck, NUM_CLASSES), ("",)),
    # RPAT_SOTAs / ReBAT, saved through DataParallel. RobustBench's PreActResNet(PreActBlockV2, [2, 2, 2, 2],
    # bn_before_fc=True) has exactly these keys (without the prefix: the WRN case below covers that path).
    "preact_resnet18": (lambda: TorchResNet(TorchPreActBlock, NUM_CLASSES, preact=True), ("module.",)),
    # TRADES / MART models/wideresnet.py (unused sub_block1), WRN-34-10's key layout at a test size
    "wide_resnet_trades": (lambda: TradesWideResNet(10, 2, NUM_CLASSES), ("",)),
    # RobustBench wide_resnet.py::WideResNet (sub_block1=False)
    "wide_resnet": (lambda: TorchWideResNet(10, 2, NUM_CLASSES), ("no_batches_tracked",)),
}


def _keras_model(arch):
    options = dict(num_classes=NUM_CLASSES, input_shape=(SIZE, SIZE, 3), data_format="channels_last")
    if arch.startswith("wide_resnet"):
        return models.wide_resnet(depth=10, widen_factor=2, **options)
    return models.get(arch, **options)


def _randomized(module, seed=0):
    """Non-trivial weights and BatchNorm statistics, so that inference mode is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
    return module


def _saved_keys(module, layout):
    state = module.state_dict()
    if layout == "no_batches_tracked":
        return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return {layout + k: v for k, v in state.items()}


def _images(seed=1, n=4):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype("float32")


def _rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12))


def _torch_logits(module, x, training):
    module.train(training)
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _keras_logits(model, x, training):
    return keras.ops.convert_to_numpy(model(x, training=training))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_layout_imports_with_the_same_logits_and_exports_to_the_shipped_module(arch):
    build, layouts = ARCHS[arch]
    torch.manual_seed(0)
    reference = _randomized(build())
    model = _keras_model(arch)
    name, options = (
        (arch, {}) if not arch.startswith("wide_resnet") else ("wide_resnet", {"depth": 10, "widen_factor": 2})
    )
    shipped = torch_models.get(name, num_classes=NUM_CLASSES, **options)
    x = _images()
    for layout in layouts:
        models.from_torch(model, _saved_keys(reference, layout))
        # Out again: the shipped module loads the exported keys strictly.
        torch_models.load_arrays(shipped, models.torch_state_dict(model, shipped.state_dict().keys()))
        for training in (False, True):  # training mode uses (and updates) the batch statistics
            logits = _keras_logits(model, x, training)
            error = _rel_err(logits, _torch_logits(reference, x, training))
            assert error < TOLERANCE, (layout, training, error)
            assert _rel_err(_torch_logits(shipped, x, training), logits) < TOLERANCE, (layout, training)


def test_the_shipped_basic_resnet18_has_the_trades_mart_keys_and_shapes():
    # TRADES / MART models/resnet.py::ResNet18: built on the meta device (no weights), keys and shapes only;
    # its forward is the BasicBlock of test_models.py's parity test.
    with torch.device("meta"):
        shipped = torch_models.get("resnet18", num_classes=NUM_CLASSES).state_dict()
        reference = TorchResNet(TorchBasicBlock, NUM_CLASSES).state_dict()
    assert {k: tuple(v.shape) for k, v in shipped.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    model = models.resnet18(num_classes=NUM_CLASSES, input_shape=(SIZE, SIZE, 3))
    assert set(models.torch_state_dict(model, shipped.keys())) == set(shipped)


def test_unmatched_and_misshaped_keys_are_listed():
    model = models.small_cnn(num_classes=NUM_CLASSES, input_shape=(SIZE, SIZE, 3))
    state = torch_models.get("small_cnn", num_classes=NUM_CLASSES).state_dict()
    state["extra.weight"] = torch.zeros(3)
    state["linear.weight"] = torch.zeros(5, 32)
    del state["bn2.running_var"]
    before = keras.ops.convert_to_numpy(model.get_layer("conv1").kernel).copy()
    with pytest.raises(ValueError) as info:
        models.from_torch(model, state)
    message = str(info.value)
    assert "1 keys with no Keras weight: extra.weight" in message
    assert "bn2.running_var" in message  # the Keras weight without a key
    assert "linear.weight: (5, 32) (Keras logits needs (32, 7))" in message
    # Nothing was assigned (the checkpoint's conv1 differs from the Keras initialisation).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv1").kernel), before)
    assert not np.allclose(before, state["conv1.weight"].numpy().transpose(2, 3, 1, 0))


def _small_cnn_checkpoint(tmp_path, normalize=None):
    torch.manual_seed(0)
    net = _randomized(torch_models.get("small_cnn", num_classes=NUM_CLASSES, normalize=normalize))
    path = tmp_path / "model.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    return net, path


def test_convert_then_export_round_trips_through_the_command_line(tmp_path):
    net, path = _small_cnn_checkpoint(tmp_path, normalize="cifar10")
    keras_path = tmp_path / "model.keras"
    result = invoke(
        main,
        ["convert", path, "--arch", "small-cnn", "--num-classes", NUM_CLASSES, "--normalize", "cifar10"]
        + ["--out", keras_path],
    )
    assert result.exit_code == 0, result.output
    model = keras.saving.load_model(keras_path, compile=False)
    x = np.random.default_rng(4).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert _rel_err(_keras_logits(model, x, False), expected) < TOLERANCE

    out = tmp_path / "exported.pt"
    result = invoke(main, ["export", keras_path, "--format", "torch", "--out", out])
    assert result.exit_code == 0, result.output
    again = torch_models.get("small_cnn", num_classes=NUM_CLASSES, normalize="cifar10")
    again.load_state_dict(torch.load(out, weights_only=True), strict=True)
    again.eval()
    with torch.no_grad():
        assert _rel_err(again(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy(), expected) < TOLERANCE


def test_convert_names_the_keys_that_do_not_fit(tmp_path):
    _, path = _small_cnn_checkpoint(tmp_path)
    result = invoke(main, ["convert", path, "--arch", "preact_resnet18", "--out", tmp_path / "m.keras"])
    assert result.exit_code == 1
    assert "keys with no Keras weight" in result.output and "Traceback" not in result.output
    result = invoke(main, ["convert", tmp_path / "missing.pt", "--arch", "small_cnn", "--out", tmp_path / "m.keras"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_export_onnx_where_keras_supports_it(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    pytest.importorskip("onnxscript" if BACKEND == "torch" else "tf2onnx", reason="the backend's ONNX exporter")
    path = tmp_path / "m.keras"
    models.small_cnn(num_classes=NUM_CLASSES, input_shape=(SIZE, SIZE, 3)).save(path)
    result = invoke(main, ["export", path, "--format", "onnx", "--out", tmp_path / "m.onnx"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_the_torch_modules_import_without_keras():
    # Keras hidden, as on a machine with torch only (RobustBench-style evaluation code).
    code = (
        "import sys; sys.modules['keras'] = None; import keras_rpat.torch_models as t; "
        "t.get('preact_resnet18', num_classes=10); print('keras' in sys.modules and sys.modules['keras'] is not None, "
        "'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------
# RobustBench's CIFAR families (its code, transcribed in torch_reference_models.py)
# ----------------------------------------------------------------------------

# RobustBench pools with avg_pool2d(8) / avg_pool2d(4): its networks take 32x32 images.
RB_SIZE = 32
# One image: the 18-layer networks take seconds per float64 forward (BatchNorm still has >= 16 values a channel).
RB_BATCH = 1
# family -> (RobustBench's module, keras_rpat's name and builder options, options of the shipped twin).
# Options that the checkpoint tells (bias_last, a DMWideResNet's depth and width) are not given: from_torch
# reads them off the keys.
RB_FAMILIES = {
    "DMWideResNet-16-1": (
        lambda: rb.RBDMWideResNet(NUM_CLASSES, depth=16, width=1, activation_fn=rb.RBSwish),
        ("dm_wide_resnet", {}),
        {"depth": 16, "width": 1},
    ),
    "DMWideResNet-10-2-cifar100": (  # CIFAR-100 statistics inside, as RobustBench's CIFAR-100 entries
        lambda: rb.RBDMWideResNet(
            100, depth=10, width=2, activation_fn=nn.SiLU, mean=rb.RB_CIFAR100_MEAN, std=rb.RB_CIFAR100_STD
        ),
        ("dm_wide_resnet", {}),
        {"depth": 10, "width": 2},
    ),
    "DMPreActResNet-18": (
        lambda: rb.RBDMPreActResNet(NUM_CLASSES, depth=18, activation_fn=rb.RBSwish),
        ("dm_preact_resnet18", {}),
        {},
    ),
    "PreActResNet18()": (lambda: rb.rb_preact_resnet18(NUM_CLASSES), ("preact_resnet18_robustbench", {}), {}),
    "WideResNet(sub_block1=True)": (
        lambda: rb.RBWideResNet(10, NUM_CLASSES, 2, sub_block1=True),
        ("wide_resnet", {"depth": 10, "widen_factor": 2}),
        {"depth": 10, "widen_factor": 2, "sub_block1": True},
    ),
    "WideResNet(bias_last=False)": (
        lambda: rb.RBWideResNet(10, NUM_CLASSES, 2, bias_last=False),
        ("wide_resnet", {"depth": 10, "widen_factor": 2, "bias_last": False}),
        {"depth": 10, "widen_factor": 2, "bias_last": False},
    ),
}
# float32 runs only the small networks; RobustBench's 18-layer ones run in float64.
RB_FLOAT32 = ("DMWideResNet-16-1", "WideResNet(sub_block1=True)")
# float32: a 24-bit mantissa (6e-8) through <= 18 layers of sums of up to 4,608 products and batch-statistics
# BatchNorm gives ~1e-6 relative (measured <= 5e-7); float64 gives ~1e-15.
RB_TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def _keras_from_robustbench(name, options, state_dict, num_classes):
    shape = dict(input_shape=(RB_SIZE, RB_SIZE, 3), data_format="channels_last")
    if name == "wide_resnet":  # the WideResNet of any size is a builder, not a registered name
        return models.from_torch(models.wide_resnet(num_classes=num_classes, **shape, **options), state_dict)
    return models.from_torch(name, state_dict, num_classes=num_classes, **shape, **options)


@pytest.mark.parametrize(
    "family, dtype", [(f, "float64") for f in sorted(RB_FAMILIES)] + [(f, "float32") for f in RB_FLOAT32]
)
def test_robustbench_families_round_trip_with_equal_logits(family, dtype):
    build_rb, (name, options), twin_options = RB_FAMILIES[family]
    tolerance = RB_TOLERANCE[dtype]
    with float64_precision() if dtype == "float64" else contextlib.nullcontext():
        torch.manual_seed(0)
        reference = _randomized(build_rb())
        num_classes = next(m for m in reference.modules() if isinstance(m, nn.Linear)).out_features
        x = np.random.default_rng(1).uniform(0, 1, (RB_BATCH, RB_SIZE, RB_SIZE, 3)).astype(dtype)

        # torch -> Keras: RobustBench's state_dict gives RobustBench's logits, in training mode (batch statistics)
        # and then in inference mode with the running statistics both updated.
        model = _keras_from_robustbench(name, options, reference.state_dict(), num_classes)
        expected = {}
        for training in (True, False):
            expected[training] = _keras_logits(model, x, training)
            assert expected[training].dtype == dtype
            error = _rel_err(expected[training], _torch_logits(reference, x, training))
            assert error < tolerance, (training, error)

        # Keras -> torch: exactly RobustBench's keys (sub_block1 included), which load strictly into its module
        # and into the shipped twin, with the same logits.
        arrays = models.torch_state_dict(model, reference.state_dict().keys())
        assert list(arrays) == list(reference.state_dict())
        twin = torch_models.get(name, num_classes=num_classes, **twin_options)
        assert list(twin.state_dict()) == list(arrays)
        # (RobustBench's training-mode logits were compared above, with these weights.)
        for module, modes in ((build_rb(), (False,)), (twin, (False, True))):
            module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, strict=True)
            for training in modes:
                error = _rel_err(_torch_logits(module, x, training), expected[training])
                assert error < tolerance, (type(module).__name__, training, error)


@pytest.mark.parametrize(
    "family, build_rb, twin",
    [
        ("ResNet18()", rb.rb_resnet18, "resnet18"),
        ("ResNet(Bottleneck, [2, 2, 2, 2])", rb.rb_resnet18_bottleneck, "resnet18_bottleneck"),
        ("PreActResNet(PreActBlockV2, bn_before_fc=True)", rb.rb_preact_resnet18_v2, "preact_resnet18"),
        ("WideResNet()", lambda num_classes: rb.RBWideResNet(10, num_classes, 2), "wide_resnet"),
    ],
)
@pytest.mark.skipif(BACKEND != "torch", reason="plain torch, the same on every backend: run once")
@float64_precision()
def test_the_shipped_twins_of_robustbench_families_keras_already_covers(family, build_rb, twin):
    # Keras <-> these twins is the parity of test_models.py and the layouts above: RobustBench's module and the
    # twin have the same keys and, with the same weights, the same logits (float64, plain torch).
    torch.manual_seed(0)
    reference = _randomized(build_rb(num_classes=NUM_CLASSES))
    options = {"depth": 10, "widen_factor": 2} if twin == "wide_resnet" else {}
    shipped = torch_models.get(twin, num_classes=NUM_CLASSES, **options)
    shipped.load_state_dict(reference.state_dict(), strict=True)
    x = np.random.default_rng(1).uniform(0, 1, (RB_BATCH, RB_SIZE, RB_SIZE, 3))
    for training in (False, True):
        assert _rel_err(_torch_logits(shipped, x, training), _torch_logits(reference, x, training)) < 1e-12, training


def test_a_deepmind_checkpoint_converts_and_exports_through_the_command_line(tmp_path):
    # A RobustBench DMWideResNet-10-1 (SiLU, CIFAR-10 statistics inside) saved through DataParallel: convert needs
    # neither --normalize nor the size (read off the keys), export writes RobustBench's keys back.
    torch.manual_seed(0)
    reference = _randomized(rb.RBDMWideResNet(NUM_CLASSES, depth=10, width=1, activation_fn=rb.RBSwish))
    path = tmp_path / "dm.pt"
    torch.save({"model_state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    keras_path = tmp_path / "dm.keras"
    result = invoke(
        main, ["convert", path, "--arch", "DM-WideResNet", "--num-classes", NUM_CLASSES, "--out", keras_path]
    )
    assert result.exit_code == 0, result.output
    model = keras.saving.load_model(keras_path, compile=False)
    assert model.name == "dm_wide_resnet10_1"
    assert model.get_layer("input_normalization").mean == rb.RB_CIFAR10_MEAN
    x = np.random.default_rng(4).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    expected = _torch_logits(reference, x, False)
    assert _rel_err(_keras_logits(model, x, False), expected) < RB_TOLERANCE["float32"]

    out = tmp_path / "exported.pt"
    result = invoke(main, ["export", keras_path, "--format", "torch", "--out", out])
    assert result.exit_code == 0, result.output
    assert "torch_models.get('dm_wide_resnet'" in result.output and "depth=10, width=1" in result.output
    again = rb.RBDMWideResNet(NUM_CLASSES, depth=10, width=1, activation_fn=rb.RBSwish)
    again.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert _rel_err(_torch_logits(again, x, False), expected) < RB_TOLERANCE["float32"]


def test_export_writes_the_sub_block1_layout_of_trades_and_mart(tmp_path):
    path = tmp_path / "wrn.keras"
    model = models.wide_resnet(depth=10, widen_factor=1, num_classes=NUM_CLASSES, bias_last=False)
    _randomize_keras_batchnorm(model)
    model.save(path)
    out = tmp_path / "wrn.pt"
    result = invoke(main, ["export", path, "--format", "torch", "--sub-block1", "--out", out])
    assert result.exit_code == 0, result.output
    target = rb.RBWideResNet(10, NUM_CLASSES, 1, sub_block1=True, bias_last=False)
    state = torch.load(out, weights_only=True)
    assert list(state) == list(target.state_dict())
    target.load_state_dict(state, strict=True)
    for key, value in state.items():  # the group forward never calls holds block1's weights
        if key.startswith("sub_block1."):
            torch.testing.assert_close(value, state["block1." + key[len("sub_block1.") :]], rtol=0, atol=0)
    x = np.random.default_rng(5).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    assert _rel_err(_torch_logits(target, x, False), _keras_logits(model, x, False)) < RB_TOLERANCE["float32"]

    small = tmp_path / "small.keras"
    models.small_cnn(num_classes=NUM_CLASSES, input_shape=(SIZE, SIZE, 3)).save(small)
    result = invoke(main, ["export", small, "--format", "torch", "--sub-block1"])
    assert result.exit_code == 2 and "--sub-block1 is a WideResNet layout" in result.output
    assert "Traceback" not in result.output


def _randomize_keras_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
            )


def test_a_checkpoint_of_last_and_best_weights_gives_the_last_as_robustbench_loads_it():
    # RobustBench's Andriushchenko2020Understanding (its PreActResNet18()) is saved as {"last": ..., "best": ...}.
    last, best = {"conv1.weight": torch.zeros(1)}, {"conv1.weight": torch.ones(1)}
    assert torch_models.unwrap_checkpoint({"last": last, "best": best}) is last


def test_from_torch_reads_the_options_a_checkpoint_tells():
    from keras_rpat.models import torch_checkpoints

    with torch.device("meta"):  # keys and shapes only
        no_bias = torch_models.get("wide_resnet28_10", bias_last=False, sub_block1=True).state_dict()
        gowal = {"module." + k: v for k, v in torch_models.get("dm_wide_resnet70_16").state_dict().items()}
        small = torch_models.get("small_cnn", widths=(4, 8, 8)).state_dict()
        preact = torch_models.get("dm_preact_resnet18").state_dict()
    read = torch_checkpoints._options_from_state_dict
    assert read("wide_resnet28_10", no_bias) == {"bias_last": False}
    assert read("dm_wide_resnet", gowal) == {"depth": 70, "width": 16}
    assert read("small_cnn", small) == {"widths": (4, 8, 8)}
    assert read("dm_preact_resnet18", preact) == {}
