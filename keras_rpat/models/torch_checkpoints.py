"""PyTorch checkpoints: a `state_dict` of the reference code bases or of RobustBench into a Keras model of
`keras_rpat.models`, and back.

torch itself is imported only when `from_torch` reads a file.
"""

import os
import re

import keras
import numpy as np

from keras_rpat.models.registry import canonical_name
from keras_rpat.models.registry import get


# A PyTorch parameter name -> the index of the Keras weight it fills and how a
# torch array becomes the Keras one (Conv2d (out, in, kh, kw) -> (kh, kw, in,
# out); Linear (out, in) -> (in, out)).
_TORCH_PARAMS = {
    keras.layers.Conv2D: {"weight": (0, (2, 3, 1, 0))},
    keras.layers.Dense: {"weight": (0, (1, 0)), "bias": (1, None)},
    keras.layers.BatchNormalization: {
        "weight": (0, None),
        "bias": (1, None),
        "running_mean": (2, None),
        "running_var": (3, None),
    },
}
# The classifier is `linear` in the ResNets, `fc` in the WideResNets (`logits` in DeepMind's, its Keras name).
_TORCH_HEADS = ("linear", "fc")
# Keys a PyTorch checkpoint may hold that no Keras weight needs: BatchNorm's
# step counter, and the `sub_block1` group that TRADES / MART (and RobustBench
# with `sub_block1=True`) build but never call.
_TORCH_IGNORED = ("num_batches_tracked",)
_TORCH_IGNORED_MODULES = ("sub_block1",)


def _torch_targets(model):
    """`{(keras layer name, torch parameter name): (layer, weight index, transpose)}` of every weight."""
    targets = {}
    for layer in model.layers:
        params = next((p for cls, p in _TORCH_PARAMS.items() if isinstance(layer, cls)), None)
        if params is None:
            continue
        for param, (index, transpose) in params.items():
            if index < len(layer.weights):
                targets[(layer.name, param)] = (layer, index, transpose)
    return targets


def _unprefixed(key):
    """The key without DataParallel's `module.` prefixes."""
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _torch_target_key(key):
    """`"module.layer1.0.shortcut.0.weight"` -> `("layer1_0_shortcut_0", "weight")`; `None` if ignored."""
    module, _, param = _unprefixed(key).rpartition(".")
    if param in _TORCH_IGNORED or module.split(".")[0] in _TORCH_IGNORED_MODULES:
        return None
    if module in _TORCH_HEADS:
        module = "logits"
    return module.replace(".", "_"), param


def _as_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor (torch is not imported here)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_weights(model, state_dict):
    """Copies a PyTorch `state_dict` of the same architecture into `model`'s weights.

    Keys follow the PyTorch module paths of the reference code bases: the
    Keras layer `layer1_0_shortcut_0` takes `layer1.0.shortcut.0.weight`, the
    `"logits"` layer takes `linear.*`, `fc.*` or (DeepMind's networks)
    `logits.*`. DataParallel's `module.`
    prefix, `num_batches_tracked` and TRADES' unused `sub_block1.*` are
    accepted and ignored. Nothing is assigned unless every key matches.

    Args:
        model: a model of `keras_rpat.models`.
        state_dict: a mapping from PyTorch names to tensors or NumPy arrays.

    Raises:
        ValueError: listing the keys without a Keras weight, the Keras weights
            without a key and the keys of the wrong shape.
    """
    targets = _torch_targets(model)
    assigned, unmatched, misshaped, seen = {}, [], [], set()
    for key, value in state_dict.items():
        target = _torch_target_key(key)
        if target is None:
            continue
        if target not in targets:
            unmatched.append(key)
            continue
        seen.add(target)
        layer, index, transpose = targets[target]
        array = _as_numpy(value)
        if transpose is not None and array.ndim == len(transpose):
            array = array.transpose(transpose)
        expected = tuple(layer.weights[index].shape)
        if array.shape != expected:
            misshaped.append(f"{key}: {tuple(_as_numpy(value).shape)} (Keras {layer.name} needs {expected})")
            continue
        assigned[target] = array
    missing = [f"{layer}.{param}" for (layer, param) in targets if (layer, param) not in seen]
    if unmatched or missing or misshaped:
        lines = [
            f"The PyTorch state_dict does not fit {model.name!r} ({len(state_dict)} keys, {len(targets)} weights)."
        ]
        for title, items in (
            ("keys with no Keras weight", unmatched),
            ("Keras weights with no key (torch name with '_' for '.')", missing),
            ("keys of the wrong shape", misshaped),
        ):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        lines.append("Check the architecture (--arch), num_classes and the options (stem_stride, widths).")
        raise ValueError("\n".join(lines))
    for (layer_name, param), array in assigned.items():
        layer, index, _ = targets[(layer_name, param)]
        layer.weights[index].assign(array.astype(layer.weights[index].dtype))
    return model


def _export_source_key(key):
    """The key whose weight `key` is written with: `sub_block1.*` (never called) is a copy of `block1.*`."""
    module, dot, rest = _unprefixed(key).partition(".")
    return ("block1" if module == "sub_block1" else module) + dot + rest


def torch_state_dict(model, keys):
    """`{key: numpy array}` of `model`'s weights under the PyTorch names `keys`.

    The inverse of `load_torch_weights`: `keys` are the `state_dict` keys of
    the matching PyTorch module (`keras_rpat.torch_models.get(...)`, or
    RobustBench's own), and the result has exactly these keys, so the module
    loads it with `strict=True`. The arrays are float32 (float64 for a
    float64 model). `num_batches_tracked` is written as 0; the
    `sub_block1.*` group of RobustBench's `WideResNet(sub_block1=True)`
    (TRADES' and MART's layout), which its `forward` never calls, as a copy
    of `block1.*`.

    Example:

    >>> net = keras_rpat.torch_models.get("wide_resnet34_10", sub_block1=True)
    >>> arrays = keras_rpat.models.torch_state_dict(model, net.state_dict().keys())

    Raises:
        ValueError: naming the keys without a Keras weight.
    """
    targets = _torch_targets(model)
    out, unmatched = {}, []
    for key in keys:
        target = _torch_target_key(_export_source_key(key))
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros((), dtype=np.int64)
        elif target not in targets:
            unmatched.append(key)
        else:
            layer, index, transpose = targets[target]
            array = keras.ops.convert_to_numpy(layer.weights[index])
            array = array.astype(np.float64 if array.dtype == np.float64 else np.float32)
            if transpose is not None:
                array = array.transpose(np.argsort(transpose))
            out[key] = np.ascontiguousarray(array)
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} PyTorch keys have no weight in {model.name!r}: {', '.join(unmatched[:12])}. "
            "Export with the architecture the model was built with (--arch)."
        )
    return out


def _shape(state, key):
    return tuple(state[key].shape) if key in state else None  # a tensor's or an array's


def _options_from_state_dict(name, state_dict):
    """The builder options of `name` that a checkpoint's keys and shapes tell.

    `bias_last` of the WideResNets (RobustBench's `WideResNet(bias_last=False)`
    has no `fc.bias`), `depth` and `width` of `"dm_wide_resnet"`, `widths` of
    `"small_cnn"`; `{}` for the other names.
    """
    state = {_unprefixed(k): v for k, v in state_dict.items()}
    if name.startswith("wide_resnet") and "fc.weight" in state:
        return {"bias_last": "fc.bias" in state}
    if name == "dm_wide_resnet" and _shape(state, "layer.0.block.0.conv_0.weight"):
        blocks = {int(m.group(1)) for k in state for m in [re.match(r"layer\.0\.block\.(\d+)\.", k)] if m}
        return {"depth": 6 * len(blocks) + 4, "width": _shape(state, "layer.0.block.0.conv_0.weight")[0] // 16}
    widths = [_shape(state, f"conv{i}.weight") for i in (1, 2, 3)]
    if name == "small_cnn" and all(widths):
        return {"widths": tuple(shape[0] for shape in widths)}
    return {}


def from_torch(name, state_dict_or_path, num_classes=10, **options):
    """Builds `name` and loads a PyTorch checkpoint of the same architecture into it.

    Accepts the key layouts of RPAT_Benchmarks, RPAT_SOTAs / ReBAT, TRADES /
    MART and every RobustBench CIFAR family: `ResNet18()`,
    `ResNet(Bottleneck, ...)`, `PreActResNet18()`
    (`"preact_resnet18_robustbench"`), `PreActResNet(PreActBlockV2,
    bn_before_fc=True)` (`"preact_resnet18"`), `WideResNet` with or without
    `sub_block1` and `bias_last`, `DMWideResNet` (`"dm_wide_resnet"` and its
    sizes) and `DMPreActResNet` (`"dm_preact_resnet18"`); with or without
    DataParallel's `module.` prefix and `num_batches_tracked`. A file may hold
    the `state_dict` itself or a dict with it under `"state_dict"`,
    `"model"`, ... (see `load_torch_weights`). Options that the checkpoint
    tells (`bias_last`, the `depth` and `width` of `"dm_wide_resnet"`,
    `small_cnn`'s `widths`) are read from it unless given.

    Args:
        name: a model name of `list_models()` (or an alias), or a built Keras
            model to load into.
        state_dict_or_path: a mapping of tensors / arrays, or the path of a
            file written with `torch.save` (read with `weights_only=True`).
        num_classes: number of classes of the checkpoint.
        **options: the other arguments of `keras_rpat.models.get`
            (`normalize`, `stem_stride`, `data_format`, `input_shape`, ...).
            DeepMind's networks normalise inside by default (the CIFAR-10
            statistics, CIFAR-100's for 100 classes), as RobustBench's do.

    Returns:
        The Keras model with the checkpoint's weights.

    Example:

    >>> model = keras_rpat.models.from_torch("preact_resnet18", "model.pt", normalize="cifar10")
    >>> gowal = keras_rpat.models.from_torch("dm_wide_resnet70_16", "Gowal2020Uncovering_70_16.pt")
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        from keras_rpat import torch_models  # torch is imported only when a file is read

        state_dict_or_path = torch_models.load_state_dict(state_dict_or_path)
    if not isinstance(name, keras.Model):
        name = canonical_name(name)
        options = {**_options_from_state_dict(name, state_dict_or_path), **options}
        name = get(name, num_classes=num_classes, **options)
    return load_torch_weights(name, state_dict_or_path)
