"""PyTorch checkpoints in (`models.from_torch`, `keras-rpat convert`) and out (`keras-rpat export`).

The checkpoints are written by plain PyTorch modules built here from the
specification (docs/algorithms.md#architectures, `torch_reference_models.py`) under the
key layout of each code base; after import the Keras model must give the same
logits (relative 1e-4) in inference and in training mode (batch statistics).
The shipped `keras_rpat.torch_models` are checked against the same references.
"""

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

from keras_rpat import models
from keras_rpat import torch_models
from keras_rpat.cli import main

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
