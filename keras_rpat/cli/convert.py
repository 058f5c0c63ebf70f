"""`keras-rpat convert` and `keras-rpat export`: PyTorch checkpoints in and out.

```
keras-rpat convert model.pt --arch preact_resnet18 --normalize cifar10 --out model.keras
keras-rpat export model.keras --format torch --out model.pt     # loads into keras_rpat.torch_models
keras-rpat export wrn.keras --format torch --sub-block1         # RobustBench's WideResNet(sub_block1=True)
keras-rpat export model.keras --format onnx --out model.onnx    # Keras' own ONNX export
```
"""

import os
import re

import click
import numpy as np

from keras_rpat import _io
from keras_rpat.cli import evaluate
from keras_rpat.cli import options as opt

__all__ = ["convert_command", "export_command"]


def _frameworks():
    """`(keras, keras_rpat.models, keras_rpat.torch_models)`, imported when a command runs.

    Not at the top: the options parse (and their errors answer) without Keras or torch.
    """
    import keras

    import keras_rpat.layers  # noqa: F401  (registers keras_rpat classes for loading)
    from keras_rpat import models
    from keras_rpat import torch_models

    return keras, models, torch_models


def _normalize(ctx, param, value):
    """`{}` when not given (the network's default), else `{"normalize": None | "cifar10" | "cifar100"}`."""
    if value is None:
        return {}
    if value.lower() == "none":
        return {"normalize": None}
    key = value.lower().replace("-", "").replace("_", "")
    if key in ("cifar10", "cifar100"):
        return {"normalize": key}
    raise click.BadParameter(f"must be none, cifar10 or cifar100. Received: {value!r}", ctx=ctx, param=param)


def _keras_out(ctx, param, value):
    if value is not None and not value.endswith(".keras"):
        raise click.BadParameter(f"must end with .keras. Received: {value}", ctx=ctx, param=param)
    return value


@click.command("convert")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--arch", required=True, callback=opt.canonical_arch, help="The checkpoint's architecture (aliases work)."
)
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--normalize",
    default=None,
    callback=_normalize,
    help="Input normalization the network was trained with: none (Bench), cifar10 (SOTAs/ReBAT, RobustBench) "
    "or cifar100. Default: none, but the dataset's statistics inside DeepMind's networks (dm_*), as RobustBench.",
)
@click.option("--stem-stride", type=click.IntRange(min=1), default=1, show_default=True, help="2 for Tiny-ImageNet.")
@click.option("--out", type=opt.OUT_FILE, callback=_keras_out, required=True, help="The .keras file to write.")
def convert_command(checkpoint, arch, num_classes, normalize, stem_stride, out):
    """Convert a PyTorch checkpoint (.pt) into a .keras model.

    Reads a state_dict written by the reference code bases (RPAT_Benchmarks,
    RPAT_SOTAs/ReBAT, TRADES/MART) or RobustBench (every CIFAR family:
    ResNet-18, PreActResNet-18 in both forms, WideResNet with or without
    sub_block1 and bias_last, DeepMind's DMWideResNet and DMPreActResNet),
    with or without DataParallel's `module.` prefix, and writes a Keras model
    with the same logits. Keys that do not fit the architecture are listed.

    Example: keras-rpat convert model.pt --arch preact_resnet18 --normalize cifar10 --out model.keras

    Example: keras-rpat convert Gowal2020Uncovering_70_16.pt --arch dm_wide_resnet70_16 --out gowal.keras
    """
    _, models, torch_models = _frameworks()
    click.echo(opt.backend_line())
    try:
        state_dict = torch_models.load_state_dict(checkpoint)
        model = models.from_torch(arch, state_dict, num_classes=num_classes, stem_stride=stem_stride, **normalize)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    _io.atomic_save_model(model, out)
    click.echo(f"Loaded {len(state_dict)} tensors into {arch} ({model.count_params():,} weights). Wrote {out}")


def _normalization_of(model):
    try:
        layer = model.get_layer("input_normalization")
    except ValueError:
        return None
    return (tuple(layer.mean), tuple(layer.std))


@click.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True)
@click.option("--arch", callback=opt.canonical_arch, default=None, help="Architecture. Default: the model's name.")
@click.option("--out", type=opt.OUT_FILE, default=None, help="Default: MODEL with .pt / .onnx.")
@click.option(
    "--sub-block1",
    is_flag=True,
    help="WideResNets, --format torch: also write the sub_block1 group that forward never calls (a copy of "
    "block1), the layout of RobustBench's WideResNet(sub_block1=True), TRADES and MART.",
)
@evaluate.unsafe_deserialization_option()
def export_command(model_path, fmt, arch, out, sub_block1, unsafe_deserialization):
    """Export a .keras model as a PyTorch state_dict or ONNX.

    --format torch writes a state_dict that `keras_rpat.torch_models.get(ARCH,
    ...)` loads with strict=True (plain PyTorch, no Keras needed), with the
    reference code bases' parameter names. A saved RPATTrainer exports its
    evaluation model (the weight average for ReBAT / RPAT++). --format onnx
    uses Keras' own `model.export(format="onnx")` (needs the `onnx` packages
    of the active backend).

    Example: keras-rpat export runs/x/best.keras --format torch --out best.pt
    """
    click.echo(opt.backend_line())
    model, _ = evaluate.load_model(model_path, unsafe_deserialization)  # before torch: a bad file answers sooner
    keras, models, torch_models = _frameworks()
    out = out or os.path.splitext(model_path)[0] + (".pt" if fmt == "torch" else ".onnx")
    if fmt == "onnx":
        model(np.zeros((1,) + tuple(model.input_shape[1:]), dtype="float32"))  # Keras exports called models only
        try:
            model.export(out, format="onnx", verbose=False)
        except ImportError as e:
            raise click.ClickException(f"ONNX export on the {keras.config.backend()} backend needs: {e}") from None
        except Exception as e:  # noqa: BLE001  (the exporter's own failures: name them, no traceback)
            raise click.ClickException(f"Keras' ONNX export failed: {type(e).__name__}: {e}") from None
        click.echo(f"Wrote {out}")
        return
    arch = arch or _arch_of(model)
    if sub_block1 and not arch.startswith("wide_resnet"):
        raise click.UsageError(f"--sub-block1 is a WideResNet layout; {model.name!r} exports as {arch!r}.")
    normalize = _normalization_of(model)
    num_classes = int(model.get_layer("logits").units)
    options = _torch_options(model, arch)
    if sub_block1:
        options["sub_block1"] = True
    net = torch_models.get(arch, num_classes=num_classes, normalize=normalize, **options)
    try:
        arrays = models.torch_state_dict(model, net.state_dict().keys())
        torch_models.load_arrays(net, arrays)  # strict=True: fails here rather than in the user's code
    except (ValueError, RuntimeError) as e:  # RuntimeError: torch's size mismatch (another --arch)
        raise click.ClickException(f"{str(e).strip()}\nExport with the architecture the model was built with (--arch).")
    torch_models.save_state_dict(arrays, out)
    extra = "".join(
        f", {k}={v!r}" for k, v in options.items() if (k, v) not in (("stem_stride", 1), ("bias_last", True))
    )
    click.echo(
        f"Wrote {out}: {len(arrays)} tensors. Load it with: net = keras_rpat.torch_models.get({arch!r}, "
        f"num_classes={num_classes}"
        + (f", normalize={normalize}" if normalize else "")
        + extra
        + "); net.load_state_dict(torch.load(path), strict=True)"
    )


def _arch_of(model):
    """The torch module's name for `model`: its canonical name, or the family of a WideResNet of another size."""
    try:
        return opt.canonical_arch(None, None, model.name)
    except click.BadParameter:
        family = re.fullmatch(r"(dm_wide_resnet|wide_resnet)\d+_\d+", model.name)
        if family is None:
            raise
        return family.group(1)


def _torch_options(model, arch):
    """The builder options a torch module needs beyond the name: the stem stride, and what the name leaves open
    (small_cnn's widths, a WideResNet's classifier bias and size, DeepMind's activation)."""
    keras = _frameworks()[0]
    stem = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    options = {"stem_stride": int(stem.strides[0])}
    if arch == "small_cnn":
        options["widths"] = tuple(int(model.get_layer(f"conv{i}").filters) for i in (1, 2, 3))
    if arch.startswith("wide_resnet"):
        options["bias_last"] = bool(model.get_layer("logits").use_bias)
    if arch == "wide_resnet":
        blocks = sum(re.fullmatch(r"block1_layer_\d+_conv1", layer.name) is not None for layer in model.layers)
        options.update(depth=6 * blocks + 4, widen_factor=int(model.get_layer("block3_layer_0_conv1").filters) // 64)
    if arch == "dm_wide_resnet":
        blocks = sum(re.fullmatch(r"layer_0_block_\d+_conv_0", layer.name) is not None for layer in model.layers)
        options.update(depth=6 * blocks + 4, width=int(model.get_layer("layer_2_block_0_conv_0").filters) // 64)
    if arch.startswith("dm_"):
        final = model.get_layer("relu")
        options["activation"] = "relu" if isinstance(final, keras.layers.ReLU) else final.get_config()["activation"]
    return options
