"""The NumPy input pipeline: `keras.utils.PyDataset`s that feed `fit` and `evaluate`.

`TrainSequence` / `EvalSequence` yield float32 batches in [0, 1], the same
under every Keras backend, applying the reference augmentations (random crop
after 4-pixel zero or reflect padding, horizontal flip, the two-view transform
of Consistency-AT, and CutMix); `make_datasets` builds a reference pipeline's
pair of them.
"""

import math
import os
import warnings

import keras
import numpy as np

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat.datasets import generated as generated_lib
from keras_rpat.datasets.dataset import Dataset
from keras_rpat.datasets.loading import load


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
    x = _data_checks.validate_images(x, name="x", allow_uint8=True)
    if num_classes is None:
        y = _data_checks.label_indices(y, None, "y")
    else:
        _checks.check_positive_int(num_classes, "num_classes")
        y = _data_checks.validate_labels(y, int(num_classes), "y")
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    return x, y


class TrainSequence(keras.utils.PyDataset):
    """Augmented, shuffled training batches for `model.fit` (NumPy, any backend).

    Yields `(x, y)` with `x` float32 in [0, 1]. Each image gets its own random crop
    after `pad`-pixel padding and a horizontal flip with probability 0.5 (see
    docs/algorithms.md#data-pipeline): `pad_mode="zero"` is torchvision's `RandomCrop(S, padding=4)` (the Bench
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

    With `cutmix=True` (docs/algorithms.md#cutmix) each batch additionally draws
    `lam ~ Beta(1, 1)`, a random partner permutation and one box for the whole
    batch of side `int(S * sqrt(1 - lam))` around a uniform centre (clipped), pastes
    the partner's pixels and sets `lam = 1 - box_area / S**2`; `y` becomes the soft
    target `lam * onehot(y_a) + (1 - lam) * onehot(y_b)` of shape
    `(B, num_classes)` (cross-entropy with it equals the mixed loss
    `lam * CE(y_a) + (1 - lam) * CE(y_b)`).

    With `generated` data and `generated_fraction=f > 0` (Wang et al. 2023's
    sampler; docs/guides/data.md#generated) every batch holds
    `int(batch_size * f)` generated images, drawn uniformly with replacement,
    and `batch_size - int(batch_size * f)` real ones, taken in the epoch's
    shuffled order, in shuffled positions; the last batch is filled up with
    generated images. An epoch keeps `ceil(N / batch_size)` batches, so it
    sees a fresh random part of the real images. Both sources get the same
    augmentation, drawn per image.

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
        generated: extra labelled images: the path of an `.npz` file with
            `image` (uint8, NHWC) and `label` arrays (memory-mapped, so it may
            be far larger than the RAM), a `GeneratedData`, or a tuple
            `(images, labels)`. Requires `num_classes`.
        generated_fraction: the share of each batch's images taken from
            `generated`, in [0, 1) (0.7 in Wang et al. 2023).
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
        generated=None,
        generated_fraction=0.0,
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
        _data_checks.channel_axis(data_format)
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
        self.generated_fraction = generated_lib.check_fraction(generated_fraction, generated)
        self.generated = self._open_generated(generated)
        self.num_generated = generated_lib.generated_per_batch(self.batch_size, self.generated_fraction)
        if self.generated_fraction > 0 and self.num_generated == 0:
            warnings.warn(
                f"generated_fraction={self.generated_fraction:g} of batch_size={self.batch_size} rounds down to no "
                "generated image per batch (int(batch_size * generated_fraction) = 0). Use a larger batch or fraction.",
                stacklevel=2,
            )
        self.epoch = 0
        self._order = self._make_order()

    def _open_generated(self, generated):
        if generated is None:
            return None
        if self.num_classes is None:
            raise ValueError(
                "`num_classes` is required with `generated` data (its labels are checked against it). "
                "Received: num_classes=None"
            )
        image_shape = self.x.shape[1:]
        if isinstance(generated, generated_lib.GeneratedData):
            if generated.num_classes != self.num_classes or generated.image_shape != image_shape:
                raise ValueError(
                    f"`generated` must match the training data. Received: {generated!r} with num_classes="
                    f"{generated.num_classes} for training images of shape {image_shape} and "
                    f"num_classes={self.num_classes}."
                )
            return generated
        if isinstance(generated, tuple) and len(generated) == 2:
            return generated_lib.GeneratedData(*generated, self.num_classes, image_shape)
        if isinstance(generated, (str, os.PathLike)):
            return generated_lib.GeneratedData.open(generated, self.num_classes, image_shape)
        raise ValueError(
            "`generated` must be the path of an .npz file, a `GeneratedData` or a tuple (images, labels). "
            f"Received: generated of type {type(generated).__name__}"
        )

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
            "generated": None if self.generated is None else self.generated.name,
            "num_generated_images": 0 if self.generated is None else len(self.generated),
            "generated_fraction": self.generated_fraction,
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
        xb, yb = self._rows(index)
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

    def _rows(self, index):
        """The images (not augmented) and labels of batch `index`."""
        if not self.num_generated:
            ids = self._order[index * self.batch_size : (index + 1) * self.batch_size]
            return self.x[ids], self.y[ids]
        mix = np.random.default_rng([self.seed, self.epoch, index, 2])
        real, gen, perm = generated_lib.mix_rows(
            self._order, len(self.generated), self.batch_size, self.num_generated, index, mix
        )
        xg, yg = self.generated.rows(gen)
        if self.x.dtype != np.uint8:  # real images stored as float32 in [0, 1]
            xg = _data_checks.to_float01(xg)
        return np.concatenate([self.x[real], xg])[perm], np.concatenate([self.y[real], yg])[perm]


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
        _data_checks.channel_axis(data_format)
        if y is None:
            self.x = _data_checks.validate_images(x, name="x", allow_uint8=True)
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
    # pipeline: (pad_mode, default test batch size) -- docs/algorithms.md#data-pipeline.
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
    generated=None,
    generated_fraction=0.0,
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
        generated: extra labelled training images mixed into every batch (an
            `.npz` path with `image` and `label`, a `GeneratedData` or a tuple
            `(images, labels)`; see `TrainSequence`).
        generated_fraction: their share of each batch, in [0, 1).
        **kwargs: passed to both sequences (`workers`, `use_multiprocessing`,
            `max_queue_size`).

    Returns:
        A tuple `(train_seq, test_seq)` of `TrainSequence` and `EvalSequence`.

    Example:

    >>> ds = keras_rpat.datasets.load("synthetic")
    >>> train, test = keras_rpat.datasets.make_datasets(ds, pipeline="sotas")
    """
    _checks.check_choice(pipeline, "pipeline", sorted(_PIPELINES))
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
        generated=generated,
        generated_fraction=generated_fraction,
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
