"""`load(name)`: a dataset by name (or `.npz` path), through the loader of its kind."""

import os

from keras_rpat import _checks
from keras_rpat._names import DATASETS
from keras_rpat.datasets import cifar
from keras_rpat.datasets import npz
from keras_rpat.datasets import synthetic
from keras_rpat.datasets import tiny_imagenet

# Options of an `.npz` file besides n_train/n_test.
_NPZ_OPTIONS = ("num_classes",)

# Canonical name (one per `_names.DATASETS`) -> (loader, options it accepts besides n_train/n_test).
_LOADERS = {
    "cifar10": (cifar.load_cifar10, ("download",)),
    "cifar100": (cifar.load_cifar100, ("download",)),
    "tiny_imagenet": (tiny_imagenet.load_tiny_imagenet, ("cache_dir", "use_cache")),
    "synthetic": (synthetic.load_synthetic, ("num_classes", "image_size", "seed", "contrast")),
}


def list_datasets():
    """Returns the names accepted by `keras_rpat.datasets.load`.

    Any path ending in `.npz` is accepted as well.

    Returns:
        A list of dataset names.
    """
    return sorted(DATASETS)


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
    loader, allowed = (npz.load_npz, _NPZ_OPTIONS) if key == "npz" else _LOADERS[key]
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
