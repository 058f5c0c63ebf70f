"""Tiny-ImageNet from its original folder layout, decoded once and cached as an `.npz`."""

import hashlib
import os
import warnings

import numpy as np

from keras_rpat import _io
from keras_rpat.datasets.dataset import Dataset
from keras_rpat.datasets.dataset import default_data_dir
from keras_rpat.datasets.npz import NPZ_KEYS

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_FOLDER = "tiny-imagenet-200"
_TINY_CACHE_VERSION = 1

_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")


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


def load_tiny_imagenet(data_dir=None, cache_dir=None, use_cache=True):
    root = find_tiny_imagenet(data_dir)
    index = _index_tiny_imagenet(root)
    cache_folder = os.path.expanduser(cache_dir) if cache_dir else os.path.dirname(root)
    cache_path = os.path.join(cache_folder, _TINY_FOLDER + ".keras_rpat.npz")
    arrays = None
    if use_cache and os.path.isfile(cache_path):
        try:
            with np.load(cache_path, allow_pickle=False) as f:
                if str(f["fingerprint"]) == index["fingerprint"]:
                    arrays = {k: f[k] for k in NPZ_KEYS}
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
