"""CIFAR-10 / CIFAR-100 through tensorflow-datasets, with a short answer when offline."""

import os
import shutil
import socket

import keras
import numpy as np

from keras_rpat.datasets.dataset import Dataset

_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "Loading CIFAR-10/100 requires tensorflow-datasets (and tensorflow). "
            "Install them with `pip install tensorflow-datasets tensorflow-cpu`, or "
            "pass a keras.datasets-style .npz file to `keras_rpat.datasets.load`."
        ) from e
    return tfds


def _hide_gpus_from_tensorflow():
    """Keeps TensorFlow (used by tfds) off the GPUs when Keras runs on another
    backend, so that it does not reserve GPU memory the model needs."""
    if keras.config.backend() == "tensorflow":
        return
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except Exception:  # TF missing, or its runtime is already initialised.
        pass


# Where tensorflow-datasets downloads CIFAR from, and how long to wait for it.
_TFDS_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}
NETWORK_TIMEOUT_S = 5.0


def _tfds_folder(data_dir):
    if data_dir is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    return os.path.abspath(
        os.path.expanduser(os.environ.get("TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")))
    )


def _offline_error(tfds_name, folder, reason):
    return RuntimeError(
        f"Could not download {tfds_name!r}: {reason}. Put the prepared tensorflow-datasets copy in {folder} "
        f"(build it on a machine with internet access with `tfds build {tfds_name}` and copy its "
        "tensorflow_datasets folder there, or pass --data-dir), or pass a keras.datasets-style .npz file "
        "(x_train, y_train, x_test, y_test) instead of the dataset name."
    )


def _check_reachable(tfds_name, folder):
    """Fails within `NETWORK_TIMEOUT_S` seconds when the dataset's download host cannot be reached."""
    host = _TFDS_HOSTS.get(tfds_name)
    if host is None:
        return
    try:
        socket.create_connection((host, 443), timeout=NETWORK_TIMEOUT_S).close()
    except OSError as e:
        raise _offline_error(tfds_name, folder, f"the network is unreachable ({host}: {e.strerror or e})") from None


def _remove_new_entries(folder, before):
    """Removes what a failed download left in `folder` (and `folder` itself if it was created)."""
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    if os.path.isdir(folder):
        for name in set(os.listdir(folder)) - before:
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


def _load_tfds(tfds_name, data_dir=None, download=True):
    tfds = _import_tfds()
    _hide_gpus_from_tensorflow()
    folder = _tfds_folder(data_dir)
    before = set(os.listdir(folder)) if os.path.isdir(folder) else None
    try:
        return _read_tfds(tfds, tfds_name, data_dir, download=False)
    except Exception as e:
        if not download:
            raise _tfds_error(tfds_name, data_dir, e) from e
    try:
        _check_reachable(tfds_name, folder)
        return _read_tfds(tfds, tfds_name, data_dir, download=True)
    except Exception as e:
        _remove_new_entries(folder, before)
        if isinstance(e, RuntimeError) and "Could not download" in str(e):
            raise
        raise _tfds_error(tfds_name, data_dir, e) from e


def _tfds_error(tfds_name, data_dir, e):
    where = data_dir if data_dir is not None else "the tfds default folder"
    return RuntimeError(
        f"Could not load {tfds_name!r} with tensorflow-datasets "
        f"(data_dir={where}): {e}. On a machine without internet access, "
        f"build it elsewhere (`tfds build {tfds_name}`) and copy the "
        "tensorflow_datasets folder over, or pass a keras.datasets-style "
        ".npz file to `keras_rpat.datasets.load`."
    )


def _read_tfds(tfds, tfds_name, data_dir, download):
    arrays = {}
    for split in ("train", "test"):
        # Fixed-size batches rather than batch_size=-1: the same arrays, and it
        # also works under `tfds.testing.mock_data` (which has no split sizes).
        ds = tfds.load(
            tfds_name,
            split=split,
            as_supervised=True,
            batch_size=10_000,
            data_dir=data_dir,
            download=download,
            shuffle_files=False,
        )
        xs, ys = [], []
        for xb, yb in tfds.as_numpy(ds):
            xs.append(np.asarray(xb, dtype=np.uint8))
            ys.append(np.asarray(yb, dtype=np.int64))
        arrays[f"x_{split}"] = np.concatenate(xs)
        arrays[f"y_{split}"] = np.concatenate(ys)
    return arrays


def load_cifar10(data_dir=None, download=True):
    arrays = _load_tfds("cifar10", data_dir=data_dir, download=download)
    return Dataset(**arrays, num_classes=10, name="cifar10", class_names=list(_CIFAR10_CLASSES))


def load_cifar100(data_dir=None, download=True):
    # tfds' supervised "label" of cifar100 is the fine label (100 classes).
    arrays = _load_tfds("cifar100", data_dir=data_dir, download=download)
    return Dataset(**arrays, num_classes=100, name="cifar100")
