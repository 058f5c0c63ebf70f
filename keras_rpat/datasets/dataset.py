"""The `Dataset` container: an image-classification dataset held in memory as NumPy arrays."""

import dataclasses
import os

import numpy as np

from keras_rpat import _checks
from keras_rpat import _data_checks


def default_data_dir():
    """Returns the default folder for datasets that are not managed by tfds.

    `$KERAS_RPAT_DATA_DIR` if set, else `~/.keras/datasets` (the `keras.datasets`
    folder). CIFAR-10/100 use the tensorflow-datasets default
    (`~/tensorflow_datasets`) unless `data_dir` is given.
    """
    return os.path.expanduser(os.environ.get("KERAS_RPAT_DATA_DIR", os.path.join("~", ".keras", "datasets")))


def _as_storage_images(x, name):
    """Returns images as uint8 when lossless, else float32 in [0, 1]."""
    x = _data_checks.validate_images(x, name=name, allow_uint8=True)
    if x.dtype == np.uint8:
        return x
    q = np.rint(x * np.float32(255.0))
    if np.max(np.abs(q / np.float32(255.0) - x)) <= 1e-6:
        return q.astype(np.uint8)
    return x.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------
# Dataset container
# ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Dataset:
    """An image-classification dataset held in memory as NumPy arrays.

    Images are stored channels-last, as `uint8` in [0, 255] when that is lossless
    (otherwise `float32` in [0, 1]); labels as int64 class indices of shape `(N,)`.
    The arrays are validated (and converted) on construction.

    Args:
        x_train: training images, `(N, H, W, C)`, `uint8` or float in [0, 1].
        y_train: training labels, `(N,)` or `(N, 1)`.
        x_test: test images, same `(H, W, C)` as `x_train`.
        y_test: test labels.
        num_classes: number of classes.
        name: a short name (`"cifar10"`, a file name, ...).
        class_names: optional list of class names, one per class.

    Attributes:
        image_shape: `(H, W, C)` of the images.

    Example:

    >>> ds = keras_rpat.datasets.load("synthetic", n_train=256, n_test=64)
    >>> ds.image_shape, ds.num_classes
    ((32, 32, 3), 10)
    >>> small = ds.subset(n_train=128, n_test=32)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str = "dataset"
    class_names: list = None
    image_shape: tuple = dataclasses.field(init=False)

    def __post_init__(self):
        self.num_classes = _checks.check_num_classes(self.num_classes)
        self.x_train = _as_storage_images(self.x_train, "x_train")
        self.x_test = _as_storage_images(self.x_test, "x_test")
        self.y_train = _data_checks.validate_labels(self.y_train, self.num_classes, "y_train")
        self.y_test = _data_checks.validate_labels(self.y_test, self.num_classes, "y_test")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(
                    f"`x_{split}` and `y_{split}` must have the same length. "
                    f"Received: len(x_{split})={len(x)}, len(y_{split})={len(y)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                "`x_train` and `x_test` must have the same image shape (H, W, C). "
                f"Received: x_train.shape={self.x_train.shape}, "
                f"x_test.shape={self.x_test.shape}"
            )
        if self.x_train.dtype != self.x_test.dtype:  # one uint8, one float32
            self.x_train = _data_checks.to_float01(self.x_train)
            self.x_test = _data_checks.to_float01(self.x_test)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            if len(self.class_names) != self.num_classes:
                raise ValueError(
                    "`class_names` must have one entry per class. Received "
                    f"{len(self.class_names)} names for num_classes="
                    f"{self.num_classes}"
                )
        self.image_shape = tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self):
        def arr(a):
            return f"{tuple(a.shape)} {a.dtype}"

        return (
            f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
            f"image_shape={self.image_shape}, x_train={arr(self.x_train)}, "
            f"x_test={arr(self.x_test)})"
        )

    def subset(self, n_train=None, n_test=None):
        """Returns a smaller `Dataset` with evenly strided examples.

        Evenly strided (rather than the first `n`) keeps the class balance for
        copies of CIFAR whose splits are sorted by class.

        Args:
            n_train: number of training examples to keep (`None`: all).
            n_test: number of test examples to keep (`None`: all).

        Returns:
            A new `Dataset` (the arrays are copies).
        """
        train = _checks.strided_indices(len(self.x_train), n_train, "n_train")
        test = _checks.strided_indices(len(self.x_test), n_test, "n_test")
        train = slice(None) if train is None else train
        test = slice(None) if test is None else test
        return Dataset(
            x_train=self.x_train[train].copy(),
            y_train=self.y_train[train].copy(),
            x_test=self.x_test[test].copy(),
            y_test=self.y_test[test].copy(),
            num_classes=self.num_classes,
            name=self.name,
            class_names=self.class_names,
        )
