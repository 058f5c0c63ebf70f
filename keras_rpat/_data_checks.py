"""Checks of images, labels and models (internal).

Images in [0, 1] in a model's data format, integer or soft labels in range, what a
Keras model says about its inputs, and the inputs that are legal but almost surely
a mistake (one warning each). Every check raises a `ValueError` that says what was
received and how to fix it. Only NumPy at the top: Keras is imported when a model
or tensor is checked (it is loaded by then).
"""

import warnings

import numpy as np

from keras_rpat._checks import check_positive_int

__all__ = [
    "channel_axis",
    "check_data",
    "check_float_dtype",
    "check_input_shape",
    "check_training_data",
    "check_validation_data",
    "ends_in_softmax",
    "evaluation_model",
    "infer_data_format",
    "is_soft_labels",
    "label_indices",
    "model_input_shape",
    "model_num_classes",
    "pixel_dtype",
    "shape_data_format",
    "to_float01",
    "to_numpy",
    "validate_images",
    "validate_labels",
    "warn_if_binary",
    "warn_if_one_class",
    "warn_if_softmax",
]

_DATA_FORMATS = ("channels_last", "channels_first")


# ---------------------------------------------------------------------------
# Images and labels
# ---------------------------------------------------------------------------


def to_numpy(x):
    """`x` as a NumPy array (backend tensors, also on a GPU, go through Keras)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception:  # e.g. a CUDA tensor: go through Keras.
        import keras

        return keras.ops.convert_to_numpy(x)


def to_float01(x):
    """uint8 images -> float32 in [0, 1] (exactly `x / 255`, like torchvision); floats -> float32."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= np.float32(255.0)
        return out
    return x.astype(np.float32, copy=False)


def pixel_dtype(model):
    """The dtype images are fed to `model` in: float64 for a model under a
    float64 dtype policy (a lowered one too), else float32."""
    return "float64" if getattr(model, "dtype", None) == "float64" else "float32"


def channel_axis(data_format):
    """-1 for `"channels_last"`, 1 for `"channels_first"`."""
    if data_format == "channels_last":
        return -1
    if data_format == "channels_first":
        return 1
    raise ValueError(
        f"`data_format` must be 'channels_last' or 'channels_first'. Received: data_format={data_format!r}"
    )


def validate_images(x, name="x", data_format="channels_last", allow_uint8=False):
    """Checks that `x` is a batch of images with pixel values in [0, 1].

    The checks: rank 4 (`(N, H, W, C)`, or `(N, C, H, W)` for
    `data_format="channels_first"`), at least one image, `C` in {1, 3}, a floating
    dtype (or `uint8` when `allow_uint8=True`, meaning [0, 255]) and, for floats,
    finite values in [0, 1].

    Args:
        x: array-like batch of images (NumPy array or backend tensor).
        name: name used for `x` in error messages.
        data_format: `"channels_last"` or `"channels_first"`.
        allow_uint8: whether `uint8` images (values in [0, 255]) are accepted.

    Returns:
        `x` as a NumPy array (not copied when it already is one).

    Raises:
        ValueError: with a message that says how to fix the input.

    Example:

    >>> x = keras_rpat.datasets.validate_images(np.zeros((2, 32, 32, 3), "float32"))
    """
    axis = channel_axis(data_format)
    x = to_numpy(x)
    layout = "(N, H, W, C)" if axis == -1 else "(N, C, H, W)"
    if x.ndim != 4:
        hint = ""
        if x.ndim == 3:
            hint = (
                " For single-channel images of shape (N, H, W), add a channel axis "
                f"with {name}[..., None]; for one image, add a batch axis with "
                f"{name}[None]."
            )
        raise ValueError(
            f"`{name}` must be a batch of images of shape {layout} ({data_format}). Received: {name}.shape={x.shape}.{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` must contain at least one image. Received: {name}.shape={x.shape}")
    _check_channels(x, name, axis, layout, data_format)
    if x.dtype == np.uint8:
        if not allow_uint8:
            raise ValueError(
                f"`{name}` must hold float pixel values in [0, 1]. Received "
                f"integer images ({name}.dtype=uint8); convert with "
                f"{name}.astype('float32') / 255."
            )
        return x
    _check_float_range(x, name, allow_uint8)
    return x


def _check_channels(x, name, axis, layout, data_format):
    if x.shape[axis] in (1, 3):
        return
    hint = ""
    other = x.shape[1] if axis == -1 else x.shape[-1]
    if other in (1, 3):
        if axis == -1:
            hint = f" It looks channels-first; transpose it with {name}.transpose(0, 2, 3, 1)."
        else:
            hint = f" It looks channels-last; transpose it with {name}.transpose(0, 3, 1, 2)."
    raise ValueError(
        f"`{name}` must have 1 or 3 channels in layout {layout} ({data_format}). Received: {name}.shape={x.shape}.{hint}"
    )


def _check_float_range(x, name, allow_uint8):
    if x.dtype.kind in "iub":
        if allow_uint8:
            fix = f"{name}.astype('uint8') (values 0-255) or {name}.astype('float32') / 255"
        else:
            fix = f"{name}.astype('float32') / 255"
        raise ValueError(
            f"`{name}` must hold float pixel values in [0, 1]"
            + (" or uint8 values in [0, 255]" if allow_uint8 else "")
            + f". Received: {name}.dtype={x.dtype}; convert with {fix}."
        )
    if x.dtype.kind != "f":
        raise ValueError(f"`{name}` must be a float array of pixel values in [0, 1]. Received: {name}.dtype={x.dtype}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"`{name}` contains NaN or infinite pixel values. Received: min={lo}, max={hi}")
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        hint = ""
        if hi > 1.0 and lo >= 0.0 and hi <= 255.0:
            hint = f" If the images are in [0, 255], divide by 255: {name} / 255."
        elif lo < 0.0:
            hint = (
                " keras_rpat models take unnormalised [0, 1] inputs (any mean/std "
                "normalisation happens inside the model); undo the normalisation."
            )
        raise ValueError(f"`{name}` pixel values must be in [0, 1]. Received: min={lo:.6g}, max={hi:.6g}.{hint}")


def validate_labels(y, num_classes, name="y"):
    """Checks integer class labels and returns them as an int64 `(N,)` array.

    Accepts labels of shape `(N,)` or `(N, 1)` (the `keras.datasets` layout), of an
    integer dtype or a float dtype holding whole numbers, with values in
    `[0, num_classes)`.

    Args:
        y: array-like of class indices.
        num_classes: the number of classes (a positive integer).
        name: name used for `y` in error messages.

    Returns:
        The labels as a NumPy int64 array of shape `(N,)`.

    Raises:
        ValueError: with a message that says how to fix the input.

    Example:

    >>> y = keras_rpat.datasets.validate_labels([[3], [1]], num_classes=10)
    """
    return label_indices(y, check_positive_int(num_classes, "num_classes"), name)


def label_indices(y, num_classes=None, name="y"):
    """`validate_labels`; with `num_classes=None` only checks that labels are >= 0."""
    y = to_numpy(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = ""
        if y.ndim == 2:
            hint = f" For one-hot or soft labels, pass class indices instead, e.g. {name}.argmax(-1)."
        raise ValueError(
            f"`{name}` must hold integer class indices of shape (N,) or (N, 1). Received: {name}.shape={y.shape}.{hint}"
        )
    if y.dtype.kind == "f":
        if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
            i = int(np.flatnonzero(~(np.isfinite(y) & (y == np.round(y))))[0])
            raise ValueError(
                f"`{name}` must hold integer class indices. Received float labels "
                f"with non-integer values (e.g. {name}[{i}]={float(y[i])}); convert soft labels with {name}.argmax(-1)."
            )
    elif y.dtype.kind in "USO":
        example = y.flat[0].item() if y.size else None
        raise ValueError(
            f"`{name}` must hold integer class indices. Received labels of dtype {y.dtype} "
            f"(e.g. {name}[0]={example!r}); map class names to indices 0..num_classes-1, "
            f"e.g. names, {name} = np.unique({name}, return_inverse=True)."
        )
    elif y.dtype.kind not in "iu":
        raise ValueError(
            f"`{name}` must hold integer class indices. Received: {name}.dtype={y.dtype}; convert with {name}.astype('int64')."
        )
    y = y.astype(np.int64, copy=False)
    if not y.size:
        return y
    bad = y < 0 if num_classes is None else (y < 0) | (y >= num_classes)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        valid = "non-negative" if num_classes is None else f"in [0, {num_classes})"
        classes = "" if num_classes is None else f", num_classes={num_classes}"
        raise ValueError(
            f"`{name}` labels must be {valid}. Received {name}[{i}]={int(y[i])} "
            f"({int(bad.sum())} label(s) out of range; labels span [{int(y.min())}, {int(y.max())}]{classes}). "
            "Remap the labels to 0..num_classes-1, or use a model with as many classes as the data."
        )
    return y


def is_soft_labels(shape, num_classes):
    """Whether labels of this (static) shape are soft targets `(B, num_classes)`.

    Integer labels are `(B,)` or `(B, 1)`; soft (CutMix, one-hot) labels have a
    last axis of `num_classes` (> 1).
    """
    return len(shape) >= 2 and shape[-1] == num_classes and num_classes != 1


# ---------------------------------------------------------------------------
# What a model says about its inputs
# ---------------------------------------------------------------------------


def evaluation_model(model):
    """The model to evaluate: an `RPATTrainer`'s `evaluation_model`, else `model`.

    Raises:
        ValueError: if `model` is not callable.
    """
    import keras

    inner = getattr(model, "evaluation_model", None)
    if isinstance(inner, keras.Model):
        return inner
    if not callable(model):
        raise ValueError(
            "`model` must be a Keras model mapping images in [0, 1] to logits "
            f"(or a keras_rpat.RPATTrainer). Received: {type(model).__name__}"
        )
    return model


def model_input_shape(model):
    """The model's input shape (with the batch axis), or `None` if unknown."""
    try:
        inputs = model.inputs
        if inputs:
            return tuple(inputs[0].shape)
    except (AttributeError, ValueError):
        pass
    return None


def model_num_classes(model):
    """The size of the model's output's last axis, or `None` if unknown."""
    try:
        outputs = model.outputs
        if outputs:
            c = outputs[0].shape[-1]
            return None if c is None else int(c)
    except (AttributeError, ValueError):
        pass
    return None


def infer_data_format(model, data_format=None):
    """Returns `"channels_last"` or `"channels_first"` for an image model.

    Uses, in order: the explicit `data_format`; the `data_format` of the first
    convolution (then of any layer that has one); the model's input shape (the
    axis of size 1 or 3); `keras.config.image_data_format()`.

    Args:
        model: a Keras model.
        data_format: optional explicit value, returned after validation.
    """
    if data_format is not None:
        if data_format not in _DATA_FORMATS:
            raise ValueError(
                f"`data_format` must be 'channels_last' or 'channels_first'. Received: data_format={data_format!r}"
            )
        return data_format
    fmt = _layer_data_format(model)
    if fmt is not None:
        return fmt
    fmt = shape_data_format(model_input_shape(model))
    if fmt is not None:
        return fmt
    import keras

    return keras.config.image_data_format()


def _sublayers(layer):
    """`layer`'s layers, depth first, through `Model.layers` (Keras' public view of a model's layers)."""
    for child in getattr(layer, "layers", None) or ():
        yield child
        yield from _sublayers(child)


def _layer_data_format(model):
    fallback = None
    for layer in _sublayers(model):
        fmt = getattr(layer, "data_format", None)
        if fmt not in _DATA_FORMATS:
            continue
        if "Conv" in type(layer).__name__:
            return fmt
        if fallback is None and "Flatten" not in type(layer).__name__:
            fallback = fmt
    return fallback


def shape_data_format(shape):
    """The data format a 4-D input shape `(N, ...)` implies (the axis of size 1 or 3), or `None`."""
    if shape is None or len(shape) != 4:
        return None
    first, last = shape[1], shape[-1]
    if last in (1, 3) and first not in (1, 3):
        return "channels_last"
    if first in (1, 3) and last not in (1, 3):
        return "channels_first"
    return None


def check_data(model, x, y, data_format=None):
    """Validates images and labels against a model; returns `(x, y, num_classes, data_format)`.

    `x` comes back float32 in the model's layout, `y` as int64 `(N,)`.
    """
    fmt = infer_data_format(model, data_format)
    x = validate_images(x, name="x", data_format=fmt)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    check_input_shape(model, x, fmt)
    warn_if_binary(x, stacklevel=4)
    y = label_indices(y, None, "y")
    if len(y) != len(x):
        raise ValueError(f"Images and labels differ in length: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}.")
    num_classes = model_num_classes(model)
    if num_classes is None:
        import keras

        num_classes = int(model(keras.ops.convert_to_tensor(x[:1]), training=False).shape[-1])
    try:
        y = label_indices(y, num_classes, "y")
    except ValueError as e:
        raise ValueError(f"The model outputs {num_classes} classes (output shape (None, {num_classes})): {e}") from None
    return x, y, num_classes, fmt


def check_input_shape(model, x, fmt):
    """Refuses images whose shape is not the model's input shape."""
    expected = model_input_shape(model)
    if expected is None:
        return
    if len(expected) != x.ndim:
        raise ValueError(f"The model expects inputs of shape {expected} but the images have shape {tuple(x.shape)}.")
    if any(e is not None and int(e) != int(a) for e, a in zip(expected[1:], x.shape[1:])):
        raise ValueError(
            f"The model expects inputs of shape {expected} but the images have "
            f"shape {tuple(x.shape)}. Evaluate on data of the size the model "
            "was built for (e.g. 32x32 for CIFAR, 64x64 for Tiny-ImageNet), "
            f"and in the model's data format ({fmt})."
        )


# ---------------------------------------------------------------------------
# Inputs that are legal but almost surely a mistake
# ---------------------------------------------------------------------------


def check_float_dtype(x, name="x"):
    """Refuses integer (or bool) images from their dtype alone, without reading a value (traceable)."""
    import keras

    dtype = keras.backend.standardize_dtype(x.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise ValueError(
            f"`{name}` must hold float pixel values in [0, 1]. Received integer images ({name}.dtype={dtype}); "
            f"convert with keras.ops.cast({name}, 'float32') / 255."
        )


def ends_in_softmax(model):
    """Whether the model's last layer is (or ends with) a softmax, read from the layers alone."""
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def warn_if_softmax(model, stacklevel=3):
    """One warning when a model ends in a softmax (keras_rpat's losses and attacks take logits)."""
    if ends_in_softmax(model):
        warnings.warn(
            f"The model {getattr(model, 'name', '')!r} ends in a softmax, but keras_rpat's losses and attacks take "
            "logits: training and attacks on probabilities see weak, saturated gradients (and robust accuracy is "
            "overestimated). Remove the final softmax (e.g. `Dense(num_classes)` without activation='softmax').",
            UserWarning,
            stacklevel=stacklevel,
        )


def warn_if_binary(x, name="x", stacklevel=3):
    """One warning when float images hold only the values 0 and 1 (float [0, 1] images cast to integers and back)."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    head = x[: min(len(x), 64)]
    if not (np.any(head == 1) and np.all((head == 0) | (head == 1))):
        return
    if np.all((x == 0) | (x == 1)):
        warnings.warn(
            f"`{name}` holds only the pixel values 0 and 1: images in [0, 1] cast to an integer type (and back) "
            f"lose every grey level. Cast uint8 images with {name}.astype('float32') / 255, not the other way "
            "round (ignore this for binary images).",
            UserWarning,
            stacklevel=stacklevel,
        )


def warn_if_one_class(y, num_classes, stacklevel=3):
    """One warning when integer training labels hold a single class (lost or sorted-and-cut labels)."""
    if not isinstance(y, np.ndarray) or y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1) or len(y) < 2:
        return
    classes = np.unique(y)
    if len(classes) == 1:
        warnings.warn(
            f"The training labels `y` hold one class ({classes[0]}) of the model's {num_classes}: "
            "the model learns to predict it everywhere, and its accuracy on the same data is 100%. "
            "Check that the labels were not lost (e.g. zeros) or sorted and cut.",
            UserWarning,
            stacklevel=stacklevel,
        )


# ---------------------------------------------------------------------------
# What `fit`, `evaluate` and `predict` are given
# ---------------------------------------------------------------------------


def check_training_data(model, num_classes, x, y=None, stacklevel=4):
    """Checks images and labels for `model` (a classifier of `num_classes`, or `None`): NumPy arrays, or the first
    batch of a `keras.utils.PyDataset`; of a tensor only its dtype (its values stay where they are). Labels are
    class indices, or soft labels `(N, num_classes)` summing to 1 per row."""
    import keras

    if isinstance(x, keras.utils.PyDataset):
        if len(x) == 0:
            raise ValueError("The training dataset is empty.")
        x, y, _ = keras.utils.unpack_x_y_sample_weight(x[0])
    if x is not None and not isinstance(x, np.ndarray) and hasattr(x, "dtype"):
        check_float_dtype(x)
    if x is None or not isinstance(x, np.ndarray):
        return
    fmt = infer_data_format(model)
    validate_images(x, data_format=fmt)
    check_input_shape(model, x, fmt)
    warn_if_binary(x, stacklevel=stacklevel + 1)
    if y is None:
        return
    y = np.asarray(y)
    if y.ndim == 2 and num_classes is not None and y.shape[1] == num_classes and y.shape[1] > 1:
        if not np.issubdtype(y.dtype, np.floating) or y.min() < 0 or not np.allclose(y.sum(1), 1.0, atol=1e-3):
            raise ValueError("Soft labels of shape (N, num_classes) must be float probabilities summing to 1 per row.")
    elif num_classes is not None:
        validate_labels(y, num_classes)
    if len(y) != len(x):
        raise ValueError(f"Images and labels differ in length: {len(x)} images, {len(y)} labels.")


def check_validation_data(model, num_classes, data, stacklevel=3):
    """`check_training_data` on `fit`'s `validation_data`: a tuple `(x, y[, sample_weight])` or a PyDataset."""
    import keras

    if isinstance(data, (tuple, list)) and data:
        check_training_data(model, num_classes, data[0], data[1] if len(data) > 1 else None, stacklevel + 1)
    elif isinstance(data, keras.utils.PyDataset):
        check_training_data(model, num_classes, data, stacklevel=stacklevel + 1)
