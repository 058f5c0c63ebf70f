"""The built-in `synthetic` task: class-specific gratings that need no download (see `load`)."""

import numpy as np

from keras_rpat import _checks
from keras_rpat.datasets.dataset import Dataset


def _hsv_to_rgb(h):
    """Fully saturated colours for hues `h` in [0, 1): array (K, 3) in [0, 1]."""
    k = (np.asarray(h)[:, None] * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def load_synthetic(n_train=2048, n_test=512, num_classes=10, image_size=32, seed=0, contrast=1.0):
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
