"""Datasets and the NumPy input pipeline used for adversarial training.

Everything here is NumPy, so it behaves identically under every Keras backend:

* `load(name)` returns a `Dataset` (CIFAR-10/100 through tensorflow-datasets,
  Tiny-ImageNet from its original folder layout, any `keras.datasets`-style `.npz`
  file, or a built-in `synthetic` task that needs no download).
* `TrainSequence` / `EvalSequence` are `keras.utils.PyDataset`s that feed
  `model.fit` / `model.evaluate` with float32 batches in [0, 1], applying the
  reference augmentations (random crop after 4-pixel zero or reflect padding,
  horizontal flip, the two-view transform of Consistency-AT, and CutMix).
* `GeneratedData` memory-maps extra labelled images (the `.npz` sets of
  diffusion-model images of Wang et al. 2023) that `TrainSequence` mixes into
  every batch at `generated_fraction`.
* `validate_images` / `validate_labels` are the input checks that other modules
  reuse.

Pixel values are always in [0, 1] once they leave this package; images are stored
as `uint8` (HWC) in memory whenever that is lossless.

One module a job: `dataset` (the container), `loading` (`load` by name),
`cifar`, `npz`, `tiny_imagenet`, `synthetic` (one loader each), `generated`
(the generated set and its batch mix) and `pipeline` (the sequences).
"""

from keras_rpat._data_checks import validate_images
from keras_rpat._data_checks import validate_labels
from keras_rpat.datasets.dataset import Dataset
from keras_rpat.datasets.dataset import default_data_dir
from keras_rpat.datasets.generated import GeneratedData
from keras_rpat.datasets.generated import find_generated  # noqa: F401  (public, outside __all__, like find_npz)
from keras_rpat.datasets.generated import merge_generated
from keras_rpat.datasets.loading import list_datasets
from keras_rpat.datasets.loading import load
from keras_rpat.datasets.npz import find_npz  # noqa: F401  (public, outside __all__, as before)
from keras_rpat.datasets.pipeline import BatchesFrom
from keras_rpat.datasets.pipeline import EvalSequence
from keras_rpat.datasets.pipeline import TrainSequence
from keras_rpat.datasets.pipeline import make_datasets
from keras_rpat.datasets.tiny_imagenet import find_tiny_imagenet  # noqa: F401  (likewise)

__all__ = [
    "BatchesFrom",
    "Dataset",
    "EvalSequence",
    "GeneratedData",
    "TrainSequence",
    "default_data_dir",
    "list_datasets",
    "load",
    "make_datasets",
    "merge_generated",
    "validate_images",
    "validate_labels",
]
