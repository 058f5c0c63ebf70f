"""Generated training data (e.g. diffusion-model images), memory-mapped and mixed into every batch.

`GeneratedData.open(path)` maps the `image` (uint8, NHWC) and `label` arrays of
an uncompressed `.npz` file (the format of Wang et al. 2023's EDM sets, written
by `np.savez`) without reading them: a batch reads only its own rows, so sets of
1M (3 GB) to 50M images need no RAM; `merge_generated` joins the parts of a
split set (20M, 50M) into one file the same way. `mix_rows` is the batch composition of
their `SemiSupervisedSampler` (DM-Improves-AT, `core/data/semisup.py`), made a
function of `(seed, epoch, batch index)` so that it resumes mid-epoch.
"""

import math
import mmap
import os
import warnings
import zipfile

import numpy as np

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import _io

GENERATED_KEYS = ("image", "label")
_RESAVE = "np.savez(path, image=images, label=labels)"


def find_generated(path, data_dir=None):
    """The path of a generated-data file (a relative one is also looked up in `data_dir`)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isabs(path) and data_dir is not None and not os.path.exists(path):
        path = os.path.join(os.path.expanduser(os.fspath(data_dir)), path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Generated-data file not found: {path}. Pass the path of an .npz file with arrays `image` (uint8, "
            f"N x H x W x C) and `label` (N,), written by {_RESAVE} (docs/guides/data.md#generated)."
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz file (a zip archive written by np.savez); it may be another format, or corrupt "
            f"or truncated. Write it with {_RESAVE}."
        )
    return path


def _map_file(path):
    """A read-only `mmap` of the whole file `path`."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _advise_random(mapped, start, nbytes):
    """Turns off the kernel's read-around for `mapped[start : start + nbytes]`, where supported (not on Windows).

    A batch then reads its few KB per image rather than 128 KB around each,
    which matters once the set is larger than the page cache.
    """
    if nbytes and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        aligned = start - start % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_RANDOM, aligned, start + nbytes - aligned)


def _map_member(path, archive, mapped, key, random_access=False):
    """`archive`'s `<key>.npy` as a read-only array on `mapped` (the file's `mmap`), without reading its data.

    `np.load` ignores `mmap_mode` for `.npz` files, so the member is located by
    hand: its local zip header gives where the stored (uncompressed) bytes
    start; there the `.npy` header gives the dtype, shape and order.
    """
    info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(
            f"{path}: the array `{key}` is compressed (np.savez_compressed), and a compressed array cannot be "
            f"memory-mapped. Re-save the file uncompressed with np.savez: d = np.load(path); "
            f"np.savez(new_path, image=d['image'], label=d['label'])."
        )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the fixed part of the local file header
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: the zip entry of `{key}` is damaged. Re-save the file with {_RESAVE}.")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as e:
            raise ValueError(
                f"{path}: `{key}` is not a readable .npy array ({e}). Re-save it with {_RESAVE}."
            ) from None
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: `{key}` holds Python objects (dtype {dtype}). Save a numeric array with {_RESAVE}.")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes > os.path.getsize(path):
        raise ValueError(
            f"{path}: `{key}` needs {nbytes} bytes but the file ends before them (truncated, e.g. an interrupted "
            "download). Download or write the file again."
        )
    if random_access:
        _advise_random(mapped, offset, nbytes)
    flat = np.frombuffer(mapped, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


class GeneratedData:
    """Labelled extra training images: a memory-mapped `.npz` file, or arrays in memory.

    The `.npz` holds `image`, `uint8` of shape `(N, H, W, C)`, and `label`,
    integer class indices of shape `(N,)` or `(N, 1)`: the files of Wang et al.
    2023 (docs/guides/data.md#generated). Pickling a mapped set pickles its
    path, not its images, so `PyDataset` workers map the file again.

    Args:
        images: `uint8` images `(N, H, W, C)` (a memory-mapped array stays mapped).
        labels: class indices `(N,)` or `(N, 1)`.
        num_classes: the number of classes of the real data; labels must be
            in `[0, num_classes)`.
        image_shape: `(H, W, C)` of the real data (`None`: not checked).
        name: how messages name the set (the file's path).

    Use `GeneratedData.open(path, num_classes, image_shape)` for a file.
    """

    def __init__(self, images, labels, num_classes, image_shape=None, name="generated"):
        self.name = str(name)
        self.path = None
        self.num_classes = _checks.check_num_classes(num_classes)
        images = _data_checks.to_numpy(images)
        if images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: `image` must be uint8 pixels in [0, 255] (the format of the EDM sets). Received: "
                f"image.dtype={images.dtype}. Convert float images in [0, 1] with "
                "np.rint(image * 255).astype('uint8') and save again."
            )
        try:
            self.images = _data_checks.validate_images(
                images, name="image", allow_uint8=True
            )  # shape and channels; no read
            self.labels = _data_checks.validate_labels(labels, self.num_classes, name="label")
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: `image` and `label` must have the same length. Received: "
                f"len(image)={len(self.images)}, len(label)={len(self.labels)}"
            )
        if image_shape is not None and tuple(self.images.shape[1:]) != tuple(image_shape):
            raise ValueError(
                f"{self.name}: the generated images must have the shape of the training images. Received: "
                f"image.shape={self.images.shape} for training images of shape {tuple(image_shape)} (H, W, C). "
                "Use a set generated for this dataset (images channels-last, N x H x W x C)."
            )
        top = int(self.labels.max())
        if top + 1 < self.num_classes:
            warnings.warn(
                f"{self.name}: the generated labels only reach class {top} of num_classes={self.num_classes}: is it "
                "the set of another dataset (e.g. CIFAR-10 images for CIFAR-100)?",
                stacklevel=3,
            )
        self.image_shape = tuple(int(d) for d in self.images.shape[1:])

    @classmethod
    def open(cls, path, num_classes, image_shape=None, data_dir=None):
        """Maps the `image` and `label` arrays of an uncompressed `.npz` file (read only when batches need them).

        Args:
            path: the `.npz` file (a relative path is also looked up in `data_dir`).
            num_classes, image_shape: as in `GeneratedData`.
            data_dir: a folder to look a relative `path` up in.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an `.npz`, a missing or compressed array, or bad
                images or labels; the message says how to fix the file.
        """
        path = find_generated(path, data_dir)
        with zipfile.ZipFile(path) as archive:
            found = sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))
            missing = [k for k in GENERATED_KEYS if k not in found]
            if missing:
                raise ValueError(
                    f"{path} is missing the array(s) {missing}. Expected `image` (uint8, N x H x W x C) and `label` "
                    f"(N,), as in the EDM sets of Wang et al. 2023; write it with {_RESAVE}. Found: {found}"
                )
            mapped = _map_file(path)
            # Batches read images at random; the labels are read in order (checked once).
            images = _map_member(path, archive, mapped, "image", random_access=True)
            labels = _map_member(path, archive, mapped, "label")
        data = cls(images, labels, num_classes, image_shape, name=path)
        data.path = path
        return data

    def __len__(self):
        return len(self.images)

    def __reduce__(self):
        if self.path is None:
            return super().__reduce__()
        return type(self).open, (self.path, self.num_classes, self.image_shape)

    def __repr__(self):
        return f"GeneratedData({self.name!r}, n={len(self)}, image_shape={self.image_shape})"

    def rows(self, ids):
        """`(images, labels)` of the rows `ids` (sorted reads: a mapped file is read in order)."""
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        return np.asarray(self.images[ids]), self.labels[ids]


def merge_generated(parts, path, num_classes, chunk_rows=16384):
    """Writes the parts of a split set (e.g. `20m_part1.npz`, `20m_part2.npz`) as one uncompressed `.npz`.

    The parts are memory-mapped and copied `chunk_rows` images at a time, so
    the memory used stays about `chunk_rows` images (50 MB for 32x32x3)
    whatever the set's size, unlike loading and concatenating them; the file
    is written atomically (`path` appears complete or not at all).

    Args:
        parts: the `.npz` files, in order.
        path: the merged file.
        num_classes: the number of classes (labels are checked against it).
        chunk_rows: images copied at a time.

    Returns:
        `path`.
    """
    if isinstance(parts, (str, os.PathLike)) or not parts:
        raise ValueError(f"`parts` must be a non-empty list of .npz files. Received: parts={parts!r}")
    chunk_rows = _checks.check_positive_int(chunk_rows, "chunk_rows")
    with warnings.catch_warnings():  # a part may hold some classes only (the sets are sorted by class)
        warnings.filterwarnings("ignore", message=".*the generated labels only reach class")
        sets = [GeneratedData.open(p, num_classes) for p in parts]
    shapes = sorted({s.image_shape for s in sets})
    if len(shapes) > 1:
        raise ValueError(f"The parts must hold images of one shape. Received: image shapes {shapes} in {list(parts)}")
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    _io.check_free_space(folder, sum(s.images.nbytes + s.labels.nbytes for s in sets), "the merged set")
    with _io.atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, arrays in (("image", [s.images for s in sets]), ("label", [s.labels for s in sets])):
                shape = (sum(len(a) for a in arrays), *arrays[0].shape[1:])
                header = {
                    "descr": np.lib.format.dtype_to_descr(arrays[0].dtype),
                    "fortran_order": False,
                    "shape": shape,
                }
                with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_1_0(f, header)
                    for a in arrays:
                        for start in range(0, len(a), chunk_rows):
                            f.write(np.ascontiguousarray(a[start : start + chunk_rows]).tobytes())
    return path


def check_fraction(generated_fraction, generated):
    """`generated_fraction` as a float in [0, 1), checked against whether generated data is given."""
    fraction = _checks.check_range(generated_fraction, "generated_fraction", 0.0, 1.0, high_open=True)
    if fraction > 0 and generated is None:
        raise ValueError(
            f"`generated_fraction` > 0 needs generated data. Received: generated_fraction={fraction:g}, "
            "generated=None; pass generated='path/to/set.npz' (or generated_fraction=0)."
        )
    if fraction == 0 and generated is not None:
        warnings.warn(
            "Generated data was given with generated_fraction=0, so no batch uses it. Pass e.g. "
            "generated_fraction=0.7 (Wang et al. 2023).",
            stacklevel=3,
        )
    return fraction


def generated_per_batch(batch_size, generated_fraction):
    """Generated rows in a full batch: `int(batch_size * generated_fraction)`, as the reference sampler."""
    return int(batch_size * generated_fraction)


def mix_rows(order, num_generated_total, batch_size, num_generated, index, rng):
    """The rows of batch `index`: `(real ids, generated ids, permutation of the concatenated batch)`.

    Wang et al. 2023's `SemiSupervisedSampler` (DM-Improves-AT,
    `core/data/semisup.py`): a batch takes the next `batch_size - num_generated`
    real images of the epoch's shuffled `order`, fills up to `batch_size` with
    generated images drawn uniformly with replacement, and shuffles the batch.
    An epoch has as many batches as without generated data
    (`ceil(N_real / batch_size)`), so it uses only the first
    `(batch_size - num_generated) * steps` real images of its order; a
    `num_generated` of 0 gives the plain pipeline's batches (the last partial).

    Args:
        order: the epoch's permutation of the real images.
        num_generated_total: the size of the generated set.
        batch_size, num_generated: the batch and its generated rows.
        index: the batch index within the epoch.
        rng: a `np.random.Generator` of `(seed, epoch, index)` only.
    """
    real_per_batch = batch_size - num_generated
    real = order[index * real_per_batch : (index + 1) * real_per_batch]
    fill = batch_size - len(real) if num_generated else 0
    gen = rng.integers(0, num_generated_total, fill)
    return real, gen, rng.permutation(len(real) + fill)
