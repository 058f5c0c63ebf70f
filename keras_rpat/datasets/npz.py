"""Datasets stored as a `keras.datasets`-style `.npz` file (x_train, y_train, x_test, y_test)."""

import os
import zipfile

import numpy as np

from keras_rpat import _data_checks
from keras_rpat.datasets.dataset import Dataset

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def find_npz(path, data_dir=None):
    """The path of a dataset `.npz` file (a relative one is also looked up in `data_dir`).

    Raises:
        FileNotFoundError: naming the path and what the file must hold.
        ValueError: the file is not an `.npz` (zip) archive.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isabs(path) and data_dir is not None and not os.path.exists(path):
        path = os.path.join(os.path.expanduser(os.fspath(data_dir)), path)
    if os.path.isdir(path):
        raise ValueError(
            f"Dataset {path} is a folder, not an .npz file. Pass the path of an .npz file with "
            "arrays x_train, y_train, x_test, y_test (keras.datasets layout)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Dataset file not found: {path}. Pass the path of an .npz file with "
            "arrays x_train, y_train, x_test, y_test (keras.datasets layout)."
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz file (a zip archive written by np.savez); it may be another format, "
            "or corrupt or truncated. Write it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    return path


def load_npz(path, data_dir=None, num_classes=None):
    path = find_npz(path, data_dir)
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"{path} is missing the array(s) {missing}. Expected keys "
                f"{list(NPZ_KEYS)} as in keras.datasets "
                "(np.savez(path, x_train=..., y_train=..., x_test=..., "
                f"y_test=...)). Found: {sorted(f.files)}"
            )
        arrays = {k: f[k] for k in NPZ_KEYS}
    for k in ("x_train", "x_test"):
        try:
            _data_checks.validate_images(arrays[k], name=k, allow_uint8=True)
        except ValueError as e:
            raise ValueError(f"In {path}: {e}") from None
    if num_classes is None:
        labels = []
        for k in ("y_train", "y_test"):
            try:
                labels.append(_data_checks.label_indices(arrays[k], None, k))
            except ValueError as e:
                raise ValueError(f"In {path}: {e}") from None
        num_classes = int(max(int(y.max()) for y in labels if y.size)) + 1
        if num_classes < 2:
            raise ValueError(
                f"In {path}: the labels hold one class (0), so num_classes would be 1 and any model is always "
                "right. Check y_train and y_test (labels lost, or the file cut from class-sorted data), or pass "
                "num_classes=."
            )
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        return Dataset(**arrays, num_classes=num_classes, name=name)
    except ValueError as e:
        raise ValueError(f"In {path}: {e}") from None
