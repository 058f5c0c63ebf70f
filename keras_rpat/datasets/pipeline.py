"""Datasets and the NumPy input pipeline used for adversarial training.

Everything here is NumPy, so it behaves identically under every Keras backend:

* `load(name)` returns a `Dataset` (CIFAR-10/100 through tensorflow-datasets,
  Tiny-ImageNet from its original folder layout, any `keras.datasets`-style `.npz`
  file, or a built-in `synthetic` task that needs no download).
* `TrainSequence` / `EvalSequence` are `keras.utils.PyDataset`s that feed
  `model.fit` / `model.evaluate` with float32 batches in [0, 1], applying the
  reference augmentations (random crop after 4-pixel zero or reflect padding,
  horizontal flip, the two-view transform of Consistency-AT, and CutMix).
* `validate_images` / `validate_labels` are the input checks that other modules
  reuse.

Pixel values are always in [0, 1] once they leave this module; images are stored
as `uint8` (HWC) in memory whenever that is lossless.
"""

import dataclasses
import hashlib
import math
import os
import shutil
import socket
import warnings
import zipfile

import keras
import numpy as np

from keras_rpat import _checks
from keras_rpat import _io
from keras_rpat._checks import validate_images
from keras_rpat._names import DATASETS
from keras_rpat._checks import validate_labels

__all__ = [
    "BatchesFrom",
    "Dataset",
    "EvalSequence",
    "TrainSequence",
    "default_data_dir",
    "list_datasets",
    "load",
    "make_datasets",
    "validate_images",
    "validate_labels",
]

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_FOLDER = "tiny-imagenet-200"
_TINY_CACHE_VERSION = 1

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

_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _as_storage_images(x, name):
    """Returns images as uint8 when lossless, else float32 in [0, 1]."""
    x = validate_images(x, name=name, allow_uint8=True)
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
        self.y_train = validate_labels(self.y_train, self.num_classes, "y_train")
        self.y_test = validate_labels(self.y_test, self.num_classes, "y_test")
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
            self.x_train = _checks.to_float01(self.x_train)
            self.x_test = _checks.to_float01(self.x_test)
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


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def list_datasets():
    """Returns the names accepted by `keras_rpat.datasets.load`.

    Any path ending in `.npz` is accepted as well.

    Returns:
        A list of dataset names.
    """
    return sorted(DATASETS)


def default_data_dir():
    """Returns the default folder for datasets that are not managed by tfds.

    `$KERAS_RPAT_DATA_DIR` if set, else `~/.keras/datasets` (the `keras.datasets`
    folder). CIFAR-10/100 use the tensorflow-datasets default
    (`~/tensorflow_datasets`) unless `data_dir` is given.
    """
    return os.path.expanduser(os.environ.get("KERAS_RPAT_DATA_DIR", os.path.join("~", ".keras", "datasets")))


def load(name, data_dir=None, **options):
    """Loads a dataset as a `keras_rpat.datasets.Dataset`.

    Names:

    * `"cifar10"`, `"cifar100"` (fine labels): through tensorflow-datasets,
      downloaded on first use into `data_dir` (default: the tfds default folder).
      Options: `download=True`.
    * `"tiny_imagenet"`: from a local `tiny-imagenet-200/` folder in its original
      layout (download and unzip `http://cs231n.stanford.edu/tiny-imagenet-200.zip`
      into `data_dir`, default `keras_rpat.datasets.default_data_dir()`). The
      official `val` split is the test set; class index = position of the wnid in
      the sorted `train/` folder names; greyscale images are converted to RGB.
      The decoded arrays are cached in an `.npz` next to the folder. Options:
      `cache_dir=None` (where to write the cache), `use_cache=True`.
    * any path ending in `.npz`: arrays `x_train`, `y_train`, `x_test`, `y_test`
      as in `keras.datasets` (`uint8` in [0, 255] or float in [0, 1], channels
      last, labels `(N,)` or `(N, 1)`); a relative path is looked up in `data_dir`
      when given. Options: `num_classes=None` (inferred from the labels).
    * `"synthetic"`: a small built-in task that needs no download (see below).
      Options: `n_train=2048`, `n_test=512`, `num_classes=10`, `image_size=32`,
      `seed=0`, `contrast=1.0` (scales the grating amplitude; the demo uses a
      lower contrast so that the adversary matters).

    Every dataset also accepts `n_train` and `n_test`, which keep an evenly
    strided subset (see `Dataset.subset`).

    The synthetic task: each class is a smooth sinusoidal grating with its own
    orientation (0-90 degrees, so that horizontal flips keep classes apart),
    frequency and colour tint; every image gets a random phase, a random shift, a
    random contrast, brightness and tint, and Gaussian noise (std 0.05). The class
    signal (grating amplitude 0.3-0.4) is about ten times an L-inf budget of
    8/255, so it stays learnable under adversarial training; colour alone does not
    separate the classes. A three-layer CNN reaches about 50% test accuracy after
    one epoch and over 95% after six. Deterministic given `seed`.

    Args:
        name: a name from `keras_rpat.datasets.list_datasets()` or a `.npz` path.
        data_dir: where the data lives or is downloaded to.
        **options: dataset-specific options (listed above).

    Returns:
        A `keras_rpat.datasets.Dataset`.

    Example:

    >>> ds = keras_rpat.datasets.load("synthetic", n_train=512, n_test=128)
    >>> ds = keras_rpat.datasets.load("cifar10")  # downloads once with tfds
    >>> ds = keras_rpat.datasets.load("tiny_imagenet", data_dir="/data")
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"`name` must be a dataset name or a path to an .npz file. Received: name={name!r}")
    n_train = options.pop("n_train", None)
    n_test = options.pop("n_test", None)
    raw = os.fspath(name)
    if raw.lower().endswith(".npz"):
        key = "npz"
    else:
        key = _checks.canonical_dataset(raw)
        if key not in _LOADERS:
            raise ValueError(
                f"Unknown dataset {raw!r}. Valid names: {list_datasets()}, or a "
                "path to an .npz file with x_train, y_train, x_test, y_test."
            )
    loader, allowed = (_load_npz, _NPZ_OPTIONS) if key == "npz" else _LOADERS[key]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown option(s) for dataset {raw!r}: {unknown}. Valid options: "
            f"{sorted(set(allowed) | {'n_train', 'n_test'})}"
        )
    if key == "synthetic":
        if n_train is not None:
            options["n_train"] = n_train
        if n_test is not None:
            options["n_test"] = n_test
        return loader(**options)
    if key == "npz":
        dataset = loader(raw, data_dir=data_dir, **options)
    else:
        dataset = loader(data_dir=data_dir, **options)
    if n_train is not None or n_test is not None:
        dataset = dataset.subset(n_train=n_train, n_test=n_test)
    return dataset


# --- CIFAR through tensorflow-datasets --------------------------------------


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


def _load_cifar10(data_dir=None, download=True):
    arrays = _load_tfds("cifar10", data_dir=data_dir, download=download)
    return Dataset(**arrays, num_classes=10, name="cifar10", class_names=list(_CIFAR10_CLASSES))


def _load_cifar100(data_dir=None, download=True):
    # tfds' supervised "label" of cifar100 is the fine label (100 classes).
    arrays = _load_tfds("cifar100", data_dir=data_dir, download=download)
    return Dataset(**arrays, num_classes=100, name="cifar100")


# --- .npz files ---------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_OPTIONS = ("num_classes",)


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


def _load_npz(path, data_dir=None, num_classes=None):
    path = find_npz(path, data_dir)
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in _NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"{path} is missing the array(s) {missing}. Expected keys "
                f"{list(_NPZ_KEYS)} as in keras.datasets "
                "(np.savez(path, x_train=..., y_train=..., x_test=..., "
                f"y_test=...)). Found: {sorted(f.files)}"
            )
        arrays = {k: f[k] for k in _NPZ_KEYS}
    for k in ("x_train", "x_test"):
        try:
            validate_images(arrays[k], name=k, allow_uint8=True)
        except ValueError as e:
            raise ValueError(f"In {path}: {e}") from None
    if num_classes is None:
        labels = []
        for k in ("y_train", "y_test"):
            try:
                labels.append(_checks.label_indices(arrays[k], None, k))
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


# --- Tiny-ImageNet ------------------------------------------------------------


def _tiny_not_found(parent):
    return FileNotFoundError(
        "Tiny-ImageNet not found: expected "
        f"{os.path.join(parent, _TINY_FOLDER, 'train')}. "
        f"Download {TINY_IMAGENET_URL} (about 240 MB) and unzip it in {parent} "
        f"so that {os.path.join(parent, _TINY_FOLDER, 'train')} exists, or pass "
        "`data_dir` pointing to the folder that contains tiny-imagenet-200 "
        "(or set $KERAS_RPAT_DATA_DIR)."
    )


def find_tiny_imagenet(data_dir):
    """`data_dir/tiny-imagenet-200`, or `data_dir` itself if it is that folder."""
    base = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    nested = os.path.join(base, _TINY_FOLDER)
    if os.path.isdir(os.path.join(nested, "train")):
        return nested
    if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "val")):
        return base
    raise _tiny_not_found(base)


def _image_files(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(_IMAGE_EXTENSIONS))


def _index_tiny_imagenet(root):
    """Lists the files and labels of a tiny-imagenet-200 folder."""
    train_dir = os.path.join(root, "train")
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not wnids:
        raise ValueError(
            f"Malformed Tiny-ImageNet folder: {train_dir} has no class folders. "
            f"Expected train/<wnid>/images/*.JPEG; re-extract {TINY_IMAGENET_URL}."
        )
    class_index = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = [], []
    for i, wnid in enumerate(wnids):
        folder = os.path.join(train_dir, wnid, "images")
        if not os.path.isdir(folder):
            raise ValueError(
                f"Malformed Tiny-ImageNet folder: {folder} does not exist. Expected "
                f"train/<wnid>/images/*.JPEG; re-extract {TINY_IMAGENET_URL}."
            )
        files = _image_files(folder)
        if not files:
            raise ValueError(f"Malformed Tiny-ImageNet folder: no images in {folder}. Re-extract {TINY_IMAGENET_URL}.")
        train_files += [os.path.join(folder, f) for f in files]
        train_labels += [i] * len(files)

    val_dir = os.path.join(root, "val")
    ann_path = os.path.join(val_dir, "val_annotations.txt")
    val_images = os.path.join(val_dir, "images")
    val_files, val_labels = [], []
    if os.path.isdir(val_images) or not os.path.isdir(val_dir):
        # Original layout: val/images/*.JPEG + val/val_annotations.txt.
        if not os.path.isfile(ann_path):
            raise FileNotFoundError(
                f"Malformed Tiny-ImageNet folder: {ann_path} is missing (the test "
                "set is the official val split: val/images/*.JPEG labelled by "
                "val/val_annotations.txt). Re-extract "
                f"{TINY_IMAGENET_URL} so that both exist."
            )
        with open(ann_path, encoding="utf-8") as f:
            annotation_text = f.read()
        for lineno, line in enumerate(annotation_text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise ValueError(
                    f"Malformed {ann_path}, line {lineno}: expected tab-separated "
                    "'filename<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1'. "
                    f"Received: {line!r}"
                )
            fname, wnid = parts[0].strip(), parts[1].strip()
            if wnid not in class_index:
                raise ValueError(
                    f"Malformed Tiny-ImageNet folder: {ann_path}, line {lineno}, "
                    f"labels {fname} with wnid {wnid!r}, which is not a class folder "
                    f"in {train_dir}. The train and val splits must come from the "
                    f"same copy of {TINY_IMAGENET_URL}."
                )
            path = os.path.join(val_images, fname)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Malformed Tiny-ImageNet folder: {path} is listed in "
                    f"{ann_path} but does not exist. Re-extract {TINY_IMAGENET_URL}."
                )
            val_files.append(path)
            val_labels.append(class_index[wnid])
    else:
        # Layout after RPAT_Benchmarks/tiny_pre.py: val/<wnid>/images/*.JPEG.
        annotation_text = ""
        for e in sorted(os.scandir(val_dir), key=lambda e: e.name):
            if not e.is_dir():
                continue
            if e.name not in class_index:
                raise ValueError(
                    f"Malformed Tiny-ImageNet folder: {e.path} is not a class folder "
                    f"in {train_dir}. The train and val splits must come from the "
                    f"same copy of {TINY_IMAGENET_URL}."
                )
            folder = os.path.join(e.path, "images")
            folder = folder if os.path.isdir(folder) else e.path
            files = _image_files(folder)
            val_files += [os.path.join(folder, f) for f in files]
            val_labels += [class_index[e.name]] * len(files)
    if not val_files:
        raise ValueError(
            f"Malformed Tiny-ImageNet folder: no val images found under {val_dir}. Re-extract {TINY_IMAGENET_URL}."
        )

    digest = hashlib.sha256()
    digest.update(f"v{_TINY_CACHE_VERSION}\n".encode())
    for paths in (train_files, val_files):
        for p in paths:
            digest.update(os.path.relpath(p, root).encode() + b"\n")
    digest.update(annotation_text.encode())
    return {
        "wnids": wnids,
        "train_files": train_files,
        "train_labels": np.asarray(train_labels, dtype=np.int64),
        "val_files": val_files,
        "val_labels": np.asarray(val_labels, dtype=np.int64),
        "fingerprint": digest.hexdigest(),
    }


def _decode_images(paths):
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("Loading Tiny-ImageNet requires Pillow. Install it with `pip install pillow`.") from e

    def read(path):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    first = read(paths[0])
    out = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    out[0] = first

    def read_into(i):
        a = read(paths[i])
        if a.shape != first.shape:
            raise ValueError(
                f"All Tiny-ImageNet images must have the same size (no resizing is "
                f"done). {paths[i]} has shape {a.shape}, {paths[0]} has "
                f"{first.shape}."
            )
        out[i] = a

    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read_into, range(1, len(paths))))
    return out


def _load_tiny_imagenet(data_dir=None, cache_dir=None, use_cache=True):
    root = find_tiny_imagenet(data_dir)
    index = _index_tiny_imagenet(root)
    cache_folder = os.path.expanduser(cache_dir) if cache_dir else os.path.dirname(root)
    cache_path = os.path.join(cache_folder, _TINY_FOLDER + ".keras_rpat.npz")
    arrays = None
    if use_cache and os.path.isfile(cache_path):
        try:
            with np.load(cache_path, allow_pickle=False) as f:
                if str(f["fingerprint"]) == index["fingerprint"]:
                    arrays = {k: f[k] for k in _NPZ_KEYS}
        except Exception as e:  # corrupt or foreign file: rebuild it.
            warnings.warn(
                f"Ignoring unreadable Tiny-ImageNet cache {cache_path} ({e}); decoding the images again.",
                stacklevel=3,
            )
    if arrays is None:
        arrays = {
            "x_train": _decode_images(index["train_files"]),
            "y_train": index["train_labels"],
            "x_test": _decode_images(index["val_files"]),
            "y_test": index["val_labels"],
        }
        if use_cache:
            try:
                os.makedirs(cache_folder, exist_ok=True)
                _io.atomic_write_npz(
                    cache_path,
                    fingerprint=np.asarray(index["fingerprint"]),
                    **arrays,
                )
            except OSError as e:
                warnings.warn(
                    f"Could not write the Tiny-ImageNet cache {cache_path} ({e}); "
                    "the images will be decoded again next time. Pass a writable "
                    "`cache_dir` to keep it.",
                    stacklevel=3,
                )
    return Dataset(
        **arrays,
        num_classes=len(index["wnids"]),
        name="tiny_imagenet",
        class_names=index["wnids"],
    )


# --- Synthetic ------------------------------------------------------------------


def _hsv_to_rgb(h):
    """Fully saturated colours for hues `h` in [0, 1): array (K, 3) in [0, 1]."""
    k = (np.asarray(h)[:, None] * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _load_synthetic(n_train=2048, n_test=512, num_classes=10, image_size=32, seed=0, contrast=1.0):
    _checks.check_positive_int(n_train, "n_train")
    _checks.check_positive_int(n_test, "n_test")
    _checks.check_positive_int(image_size, "image_size")
    _checks.check_num_classes(num_classes)
    if image_size < 8:
        raise ValueError(f"`image_size` must be at least 8. Received: image_size={image_size}")
    _checks.check_non_negative_int(seed, "seed")
    if not 0.0 < float(contrast) <= 2.5:
        raise ValueError(
            "`contrast` must be in (0, 2.5] (it scales the grating amplitude, "
            f"0.3-0.4 at 1.0). Received: contrast={contrast!r}"
        )
    c = int(num_classes)
    k = np.arange(c)
    # Class prototypes are fixed (independent of `seed`): the task is the same for
    # every seed, only the sampled images change.
    # Orientation in [0, 90] degrees only: a horizontal flip maps theta to
    # 180 - theta, so angles beyond 90 degrees would alias other classes under the
    # standard flip augmentation. (orientation, frequency) pairs are distinct for
    # the first 15 classes; hues are distinct for all.
    theta = (np.pi / 2.0) * (k % 5) / 4.0
    freq = np.array([3.0, 4.5, 6.0])[(k + 2 * (k // 5)) % 3]  # cycles per image
    colour = _hsv_to_rgb(k / c)  # evenly spaced hues
    # Classes differ in mean colour by at most 0.1 per channel, comparable to the
    # per-image tint and brightness jitter below: colour alone does not separate
    # the classes, the grating has to be learned.
    mean_colour = 0.5 + 0.1 * (colour - 0.5)
    grating_colour = 0.6 + 0.4 * colour  # per-channel grating amplitude weights

    def make(n, rng):
        y = rng.integers(0, c, n)
        s = image_size
        v, u = np.meshgrid(np.arange(s) / s, np.arange(s) / s, indexing="ij")
        shift = rng.integers(-(s // 8), s // 8 + 1, (n, 2)) / s
        phase = rng.uniform(0.0, 2.0 * np.pi, n)
        uu = u[None] + shift[:, 0, None, None]
        vv = v[None] + shift[:, 1, None, None]
        t = np.cos(theta[y])[:, None, None] * uu + np.sin(theta[y])[:, None, None] * vv
        wave = np.sin(2.0 * np.pi * freq[y][:, None, None] * t + phase[:, None, None])
        wave = wave.astype(np.float32)
        amplitude = (float(contrast) * rng.uniform(0.3, 0.4, n)).astype(np.float32)[:, None, None, None]
        img = (amplitude * grating_colour[y][:, None, None, :].astype(np.float32)) * wave[..., None]
        img += mean_colour[y][:, None, None, :].astype(np.float32)
        brightness = rng.uniform(-0.1, 0.1, n)[:, None, None, None]
        tint = rng.uniform(-0.06, 0.06, (n, 1, 1, 3))
        img = img + (brightness + tint).astype(np.float32)
        img += np.float32(0.05) * rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), y

    # Independent streams: the test set does not depend on `n_train`.
    x_train, y_train = make(int(n_train), np.random.default_rng([seed, 0]))
    x_test, y_test = make(int(n_test), np.random.default_rng([seed, 1]))
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=c,
        name="synthetic",
    )


# Canonical name (one per `_names.DATASETS`) -> (loader, options it accepts besides n_train/n_test).
_LOADERS = {
    "cifar10": (_load_cifar10, ("download",)),
    "cifar100": (_load_cifar100, ("download",)),
    "tiny_imagenet": (_load_tiny_imagenet, ("cache_dir", "use_cache")),
    "synthetic": (_load_synthetic, ("num_classes", "image_size", "seed", "contrast")),
}


# ---------------------------------------------------------------------------
# Input pipeline
# ---------------------------------------------------------------------------


def _batch_to_float(xb, data_format):
    """uint8/float NHWC -> contiguous float32 in [0, 1] in `data_format`."""
    if data_format == "channels_first":
        xb = np.ascontiguousarray(xb.transpose(0, 3, 1, 2))
    if xb.dtype == np.uint8:
        out = xb.astype(np.float32)
        out /= np.float32(255.0)  # like torchvision ToTensor: exact x / 255
        return out
    return xb.astype(np.float32, copy=False)


def _random_crop_flip(xb, rng, pad, pad_mode, flip):
    """Per-image random crop after padding, then horizontal flip with p=0.5.

    Equals `torchvision.transforms.RandomCrop(S, padding=pad)` (zero padding) or
    numpy `mode='reflect'` padding followed by a random crop (offsets 0..2*pad),
    then `RandomHorizontalFlip(0.5)`, drawn independently for each image.
    """
    b, h, w, c = xb.shape
    if pad == 0 and not flip:
        return xb
    oy = rng.integers(0, 2 * pad + 1, b)
    ox = rng.integers(0, 2 * pad + 1, b)
    flips = rng.random(b) < 0.5 if flip else np.zeros(b, dtype=bool)
    if pad:
        mode = "constant" if pad_mode == "zero" else "reflect"
        xb = np.pad(xb, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = oy[:, None] + np.arange(h)
    cols = ox[:, None] + np.arange(w)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    idx = (np.arange(b) * (hp * wp))[:, None, None] + rows[:, :, None] * wp + cols[:, None, :]
    return xb.reshape(-1, c)[idx]


def _cutmix(xb, yb, rng, num_classes):
    """CutMix on a float NHWC batch: one box for the batch, soft targets."""
    b, h, w, _ = xb.shape
    lam = rng.beta(1.0, 1.0)
    perm = rng.permutation(b)
    cut_rat = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x1, x2 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    xb[:, y1:y2, x1:x2, :] = xb[perm, y1:y2, x1:x2, :]
    lam = 1.0 - ((y2 - y1) * (x2 - x1)) / float(h * w)
    target = np.zeros((b, num_classes), dtype=np.float32)
    rows = np.arange(b)
    target[rows, yb] += np.float32(lam)
    target[rows, yb[perm]] += np.float32(1.0 - lam)
    return xb, target


def _check_xy(x, y, num_classes):
    x = validate_images(x, name="x", allow_uint8=True)
    if num_classes is None:
        y = _checks.label_indices(y, None, "y")
    else:
        _checks.check_positive_int(num_classes, "num_classes")
        y = validate_labels(y, int(num_classes), "y")
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    return x, y


class TrainSequence(keras.utils.PyDataset):
    """Augmented, shuffled training batches for `model.fit` (NumPy, any backend).

    Yields `(x, y)` with `x` float32 in [0, 1]. Each image gets its own random crop
    after `pad`-pixel padding and a horizontal flip with probability 0.5 (REFERENCE
    §3.5): `pad_mode="zero"` is torchvision's `RandomCrop(S, padding=4)` (the Bench
    pipeline), `"reflect"` is NumPy reflect padding (the SOTAs pipeline). The order
    is reshuffled every epoch and the last partial batch is kept (CIFAR-10 at batch
    128: 391 steps, the last of 80 images).

    Randomness is a function of `(seed, epoch, batch index)` only, so batches are
    reproducible and do not depend on the order in which Keras (or its worker
    threads) requests them. `epoch` counts calls to `on_epoch_end` (Keras' `fit`
    makes one before the first epoch as well, on every backend); use
    `set_epoch` to restore it when resuming.

    With `two_view=True` (Consistency-AT) each batch is
    `x = concat([aug1(x_b), aug2(x_b)])` of size `2B` with `y = concat([y_b, y_b])`,
    two independent draws of the same transform.

    With `cutmix=True` (REFERENCE §3.6) each batch additionally draws
    `lam ~ Beta(1, 1)`, a random partner permutation and one box for the whole
    batch of side `int(S * sqrt(1 - lam))` around a uniform centre (clipped), pastes
    the partner's pixels and sets `lam = 1 - box_area / S**2`; `y` becomes the soft
    target `lam * onehot(y_a) + (1 - lam) * onehot(y_b)` of shape
    `(B, num_classes)` (cross-entropy with it equals the mixed loss
    `lam * CE(y_a) + (1 - lam) * CE(y_b)`).

    Args:
        x: training images `(N, H, W, C)`, `uint8` in [0, 255] or float in [0, 1].
        y: integer labels `(N,)` or `(N, 1)`.
        batch_size: images per batch (before the two-view doubling).
        shuffle: whether to reshuffle the order every epoch.
        pad: padding in pixels before the random crop (0 disables cropping).
        pad_mode: `"zero"` or `"reflect"`.
        flip: whether to flip horizontally with probability 0.5.
        two_view: yield two independent augmentations of every image.
        cutmix: apply CutMix and yield soft targets.
        num_classes: number of classes (required with `cutmix=True`).
        seed: integer seed of all random draws.
        data_format: `"channels_last"` (NHWC) or `"channels_first"` (NCHW output).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Example:

    >>> ds = keras_rpat.datasets.load("synthetic", n_train=512, n_test=128)
    >>> train = keras_rpat.datasets.TrainSequence(ds.x_train, ds.y_train, batch_size=64)
    >>> x, y = train[0]
    >>> x.shape, x.dtype.name, y.shape
    ((64, 32, 32, 3), 'float32', (64,))
    """

    def __init__(
        self,
        x,
        y,
        batch_size=128,
        shuffle=True,
        pad=4,
        pad_mode="zero",
        flip=True,
        two_view=False,
        cutmix=False,
        num_classes=None,
        seed=0,
        data_format="channels_last",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _checks.check_positive_int(batch_size, "batch_size")
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
            raise ValueError(f"`pad` must be a non-negative integer. Received: pad={pad!r}")
        if pad_mode not in ("zero", "reflect"):
            raise ValueError(
                "`pad_mode` must be 'zero' (torchvision RandomCrop, Bench) or "
                f"'reflect' (SOTAs). Received: pad_mode={pad_mode!r}"
            )
        _checks.channel_axis(data_format)
        _checks.check_non_negative_int(seed, "seed")
        if two_view and cutmix:
            raise ValueError(
                "`two_view=True` and `cutmix=True` cannot be combined (no reference "
                "method uses both). Received: two_view=True, cutmix=True"
            )
        if cutmix and num_classes is None:
            raise ValueError(
                "`num_classes` is required when `cutmix=True` (the soft targets "
                "have shape (batch_size, num_classes)). Received: num_classes=None"
            )
        self.x, self.y = _check_xy(x, y, num_classes)
        h, w = self.x.shape[1:3]
        if pad_mode == "reflect" and pad >= min(h, w):
            raise ValueError(
                "`pad` must be smaller than the image height and width for reflect "
                f"padding. Received: pad={pad} for images of size {h}x{w}"
            )
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.pad = int(pad)
        self.pad_mode = pad_mode
        self.flip = bool(flip)
        self.two_view = bool(two_view)
        self.cutmix = bool(cutmix)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.seed = int(seed)
        self.data_format = data_format
        self.epoch = 0
        self._order = self._make_order()

    def get_config(self):
        """The augmentation settings (everything but the arrays), for logs."""
        return {
            "num_examples": int(len(self.x)),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "pad": self.pad,
            "pad_mode": self.pad_mode,
            "flip": self.flip,
            "two_view": self.two_view,
            "cutmix": self.cutmix,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "data_format": self.data_format,
        }

    def _make_order(self):
        n = len(self.x)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_end(self):
        """Advances the epoch counter and reshuffles."""
        self.epoch += 1
        self._order = self._make_order()

    def set_epoch(self, epoch):
        """Sets the epoch (e.g. when resuming training) and reshuffles."""
        _checks.check_non_negative_int(epoch, "epoch")
        self.epoch = int(epoch)
        self._order = self._make_order()

    def __getitem__(self, index):
        n_batches = len(self)
        if index < 0:
            index += n_batches
        if not 0 <= index < n_batches:
            raise IndexError(f"Batch index out of range: {index} for {n_batches} batches.")
        ids = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        xb, yb = self.x[ids], self.y[ids]
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        if self.two_view:
            v1 = _random_crop_flip(xb, rng, self.pad, self.pad_mode, self.flip)
            v2 = _random_crop_flip(xb, rng, self.pad, self.pad_mode, self.flip)
            xb = np.concatenate([v1, v2])
            yb = np.concatenate([yb, yb])
        else:
            xb = _random_crop_flip(xb, rng, self.pad, self.pad_mode, self.flip)
        if self.cutmix:
            # A fresh array: `self.x[ids]` above already copied.
            xb = _batch_to_float(xb, "channels_last")
            xb, yb = _cutmix(xb, yb, rng, self.num_classes)
            if self.data_format == "channels_first":
                xb = np.ascontiguousarray(xb.transpose(0, 3, 1, 2))
            return xb, yb
        return _batch_to_float(xb, self.data_format), yb


class BatchesFrom(keras.utils.PyDataset):
    """The batches of `sequence` from index `start` on: the rest of an epoch interrupted after `start` batches.

    `on_epoch_end` goes to `sequence`, so its epoch counter advances as in an
    uninterrupted `fit`.

    Args:
        sequence: a `TrainSequence` (any `PyDataset` with `__len__`).
        start: batches already trained, `0 <= start < len(sequence)`.
    """

    def __init__(self, sequence, start):
        super().__init__()
        _checks.check_non_negative_int(start, "start")
        if start >= len(sequence):
            raise ValueError(f"`start` must be below the {len(sequence)} batches of an epoch. Received: start={start}")
        self.sequence, self.start = sequence, int(start)

    def __len__(self):
        return len(self.sequence) - self.start

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_end(self):
        self.sequence.on_epoch_end()

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"Batch index out of range: {index} for {len(self)} batches.")
        return self.sequence[self.start + index]


class EvalSequence(keras.utils.PyDataset):
    """Batches for `model.evaluate` / `model.predict`, without augmentation.

    Yields `(x, y)` (or `(x,)` when `y` is `None`) in the original order with `x`
    float32 in [0, 1]; the last partial batch is kept.

    Args:
        x: images `(N, H, W, C)`, `uint8` in [0, 255] or float in [0, 1].
        y: integer labels `(N,)` or `(N, 1)`, or `None`.
        batch_size: images per batch.
        data_format: `"channels_last"` (NHWC) or `"channels_first"` (NCHW output).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Example:

    >>> ds = keras_rpat.datasets.load("synthetic", n_train=256, n_test=100)
    >>> test = keras_rpat.datasets.EvalSequence(ds.x_test, ds.y_test, batch_size=100)
    """

    def __init__(self, x, y=None, batch_size=128, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        _checks.check_positive_int(batch_size, "batch_size")
        _checks.channel_axis(data_format)
        if y is None:
            self.x = validate_images(x, name="x", allow_uint8=True)
            self.y = None
        else:
            self.x, self.y = _check_xy(x, y, None)
        self.batch_size = int(batch_size)
        self.data_format = data_format

    def get_config(self):
        """The settings (everything but the arrays), for logs."""
        return {
            "num_examples": int(len(self.x)),
            "batch_size": self.batch_size,
            "data_format": self.data_format,
        }

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    @property
    def num_batches(self):
        return len(self)

    def __getitem__(self, index):
        n_batches = len(self)
        if index < 0:
            index += n_batches
        if not 0 <= index < n_batches:
            raise IndexError(f"Batch index out of range: {index} for {n_batches} batches.")
        sl = slice(index * self.batch_size, (index + 1) * self.batch_size)
        xb = _batch_to_float(self.x[sl], self.data_format)
        if self.y is None:
            return (xb,)
        return xb, self.y[sl]


_PIPELINES = {
    # pipeline: (pad_mode, default test batch size) -- REFERENCE §3.5.
    "bench": ("zero", 100),
    "sotas": ("reflect", 128),
}


def make_datasets(
    dataset,
    batch_size=128,
    pipeline="bench",
    two_view=False,
    cutmix=False,
    seed=0,
    test_batch_size=None,
    data_format="channels_last",
    **kwargs,
):
    """Builds the training and test sequences of a reference pipeline.

    `pipeline="bench"`: zero padding 4 + random crop + flip, test batch 100
    (RPAT_Benchmarks). `pipeline="sotas"`: reflect padding 4 + random crop + flip,
    test batch 128 (RPAT_SOTAs). Neither normalises the inputs here: pixels stay in
    [0, 1] (the SOTAs mean/std normalisation lives inside the model).

    Args:
        dataset: a `keras_rpat.datasets.Dataset`, or a name/path for
            `keras_rpat.datasets.load`.
        batch_size: training batch size.
        pipeline: `"bench"` or `"sotas"`.
        two_view: two augmented views per image (Consistency-AT).
        cutmix: CutMix with soft targets (SOTAs, Table 4 "*").
        seed: seed of the training order and augmentations.
        test_batch_size: test batch size (`None`: the pipeline's, 100 or 128).
        data_format: `"channels_last"` or `"channels_first"`.
        **kwargs: passed to both sequences (`workers`, `use_multiprocessing`,
            `max_queue_size`).

    Returns:
        A tuple `(train_seq, test_seq)` of `TrainSequence` and `EvalSequence`.

    Example:

    >>> ds = keras_rpat.datasets.load("synthetic")
    >>> train, test = keras_rpat.datasets.make_datasets(ds, pipeline="sotas")
    """
    if pipeline not in _PIPELINES:
        raise ValueError(f"`pipeline` must be one of {sorted(_PIPELINES)}. Received: pipeline={pipeline!r}")
    if not isinstance(dataset, Dataset):
        dataset = load(dataset)
    pad_mode, default_test_batch = _PIPELINES[pipeline]
    if test_batch_size is None:
        test_batch_size = default_test_batch
    train = TrainSequence(
        dataset.x_train,
        dataset.y_train,
        batch_size=batch_size,
        shuffle=True,
        pad=4,
        pad_mode=pad_mode,
        flip=True,
        two_view=two_view,
        cutmix=cutmix,
        num_classes=dataset.num_classes,
        seed=seed,
        data_format=data_format,
        **kwargs,
    )
    test = EvalSequence(
        dataset.x_test,
        dataset.y_test,
        batch_size=test_batch_size,
        data_format=data_format,
        **kwargs,
    )
    return train, test
