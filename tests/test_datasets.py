"""Tests for keras_rpat.datasets: loaders, validation and the augmentation pipeline.

Hermetic: CIFAR goes through `tfds.testing.mock_data`, Tiny-ImageNet is a fake
folder written with PIL in `tmp_path`, everything else is generated in memory.
"""

import os

import keras
import numpy as np
import pytest

from keras_rpat import datasets as D
from keras_rpat.datasets import cifar
from keras_rpat.datasets import tiny_imagenet

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _random_images(n, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _candidates(img, pad, mode):
    """All crop/flip results of one HWC image: dict (oy, ox, flipped) -> array."""
    h, w = img.shape[:2]
    np_mode = "constant" if mode == "zero" else "reflect"
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode=np_mode)
    out = {}
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[oy : oy + h, ox : ox + w]
            out[(oy, ox, False)] = crop
            out[(oy, ox, True)] = crop[:, ::-1]
    return out


def _match(out_img, src_img, pad, mode):
    """Returns the (oy, ox, flipped) keys whose crop equals `out_img` (in [0,1])."""
    keys = []
    for key, cand in _candidates(src_img, pad, mode).items():
        if np.array_equal(out_img, cand.astype(np.float32) / 255):
            keys.append(key)
    return keys


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


class TestValidateImages:
    def test_accepts_float_in_unit_range(self):
        x = np.random.default_rng(0).random((2, 4, 4, 3)).astype("float32")
        out = D.validate_images(x)
        assert out is x

    def test_accepts_array_like(self):
        out = D.validate_images(np.zeros((1, 2, 2, 1)).tolist())
        assert isinstance(out, np.ndarray) and out.shape == (1, 2, 2, 1)

    def test_accepts_backend_tensor(self):
        x = keras.ops.zeros((2, 4, 4, 3))
        assert D.validate_images(x).shape == (2, 4, 4, 3)

    def test_integer_images_say_how_to_convert(self):
        x = np.zeros((2, 4, 4, 3), dtype=np.uint8)
        with pytest.raises(ValueError, match=r"x\.astype\('float32'\) / 255"):
            D.validate_images(x)
        with pytest.raises(ValueError, match=r"astype\('float32'\) / 255"):
            D.validate_images(x.astype("int64"))
        assert D.validate_images(x, allow_uint8=True) is x
        with pytest.raises(ValueError, match="int64"):
            D.validate_images(x.astype("int64"), allow_uint8=True)

    def test_out_of_range_floats(self):
        x = np.full((1, 2, 2, 3), 255.0, dtype="float32")
        with pytest.raises(ValueError, match=r"\[0, 1\].*divide by 255"):
            D.validate_images(x)
        with pytest.raises(ValueError, match="normalisation"):
            D.validate_images(x * 0 - 0.5)
        with pytest.raises(ValueError, match="NaN"):
            D.validate_images(np.full((1, 2, 2, 3), np.nan, dtype="float32"))

    def test_shapes(self):
        with pytest.raises(ValueError, match=r"\(N, H, W, C\).*\[\.\.\., None\]"):
            D.validate_images(np.zeros((2, 4, 4), "float32"))
        with pytest.raises(ValueError, match=r"1 or 3 channels.*transpose\(0, 2, 3, 1\)"):
            D.validate_images(np.zeros((2, 3, 8, 8), "float32"))
        with pytest.raises(ValueError, match="1 or 3 channels"):
            D.validate_images(np.zeros((2, 8, 8, 4), "float32"))
        with pytest.raises(ValueError, match="at least one image"):
            D.validate_images(np.zeros((0, 8, 8, 3), "float32"))
        # channels_first layout
        D.validate_images(np.zeros((2, 3, 8, 8), "float32"), data_format="channels_first")
        with pytest.raises(ValueError, match=r"transpose\(0, 3, 1, 2\)"):
            D.validate_images(np.zeros((2, 8, 8, 3), "float32"), data_format="channels_first")
        with pytest.raises(ValueError, match="data_format"):
            D.validate_images(np.zeros((2, 8, 8, 3), "float32"), data_format="NHWC")

    def test_other_dtypes(self):
        with pytest.raises(ValueError, match="bool"):
            D.validate_images(np.zeros((1, 2, 2, 3), bool))


class TestValidateLabels:
    def test_normalises_shape_and_dtype(self):
        y = D.validate_labels(np.array([[3], [1]], dtype=np.uint8), 10)
        assert y.dtype == np.int64 and y.shape == (2,)
        np.testing.assert_array_equal(y, [3, 1])
        y = D.validate_labels(np.array([2.0, 0.0]), 3)
        np.testing.assert_array_equal(y, [2, 0])

    def test_out_of_range(self):
        with pytest.raises(ValueError, match=r"\[0, 10\).*\[0, 10\].*num_classes=10"):
            D.validate_labels(np.arange(11), 10)
        with pytest.raises(ValueError, match="labels must be in"):
            D.validate_labels(np.array([-1, 0]), 10)

    def test_bad_labels(self):
        with pytest.raises(ValueError, match=r"argmax\(-1\)"):
            D.validate_labels(np.eye(3), 3)
        with pytest.raises(ValueError, match="non-integer"):
            D.validate_labels(np.array([0.5, 1.0]), 3)
        with pytest.raises(ValueError, match="dtype=bool"):
            D.validate_labels(np.array([True, False]), 3)
        with pytest.raises(ValueError, match=r"`num_classes` must be a positive integer"):
            D.validate_labels(np.array([0]), 0)
        with pytest.raises(ValueError, match="num_classes=2.5"):
            D.validate_labels(np.array([0]), 2.5)


# ---------------------------------------------------------------------------
# Dataset and load()
# ---------------------------------------------------------------------------


def test_list_datasets():
    names = D.list_datasets()
    assert {"cifar10", "cifar100", "tiny_imagenet", "synthetic"} <= set(names)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist'.*cifar10.*synthetic.*\.npz"):
        D.load("mnist")


def test_unknown_option():
    with pytest.raises(ValueError, match=r"Unknown option\(s\).*\['colour'\].*image_size"):
        D.load("synthetic", colour=1)


class TestSynthetic:
    def test_defaults(self):
        ds = D.load("synthetic", n_train=64, n_test=32)
        assert ds.x_train.shape == (64, 32, 32, 3) and ds.x_train.dtype == np.uint8
        assert ds.x_test.shape == (32, 32, 32, 3)
        assert ds.y_train.dtype == np.int64 and ds.y_train.shape == (64,)
        assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
        assert ds.name == "synthetic"

    def test_default_sizes(self):
        ds = D.load("synthetic")
        assert len(ds.x_train) == 2048 and len(ds.x_test) == 512
        counts = np.bincount(ds.y_train, minlength=10)
        assert counts.min() > 150  # roughly balanced

    def test_deterministic_and_seeded(self):
        a = D.load("synthetic", n_train=32, n_test=16, seed=3)
        b = D.load("synthetic", n_train=32, n_test=16, seed=3)
        c = D.load("synthetic", n_train=32, n_test=16, seed=4)
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_test, b.y_test)
        assert not np.array_equal(a.x_train, c.x_train)
        # The test split does not depend on n_train.
        d = D.load("synthetic", n_train=8, n_test=16, seed=3)
        np.testing.assert_array_equal(a.x_test, d.x_test)

    def test_options(self):
        ds = D.load("synthetic", n_train=40, n_test=8, num_classes=4, image_size=16)
        assert ds.image_shape == (16, 16, 3) and ds.num_classes == 4
        assert ds.y_train.max() < 4
        with pytest.raises(ValueError, match="`num_classes` must be an integer >= 2"):
            D.load("synthetic", num_classes=1)
        with pytest.raises(ValueError, match="`n_train` must be a positive integer"):
            D.load("synthetic", n_train=0)

    def test_classes_are_separable_by_class_means(self):
        # The class signal is large compared with 8/255: class-mean images differ
        # by far more than an L-inf budget of 8/255.
        ds = D.load("synthetic", n_train=512, n_test=8)
        x = ds.x_train.astype(np.float32) / 255.0
        stds = [x[ds.y_train == k].std() for k in range(10)]
        assert min(stds) > 0.15  # the grating dominates the per-image noise
        assert 0.0 <= x.min() and x.max() <= 1.0


class TestDataset:
    def test_storage_and_conversion(self):
        x = (np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3) % 256).astype(np.float32) / 255
        ds = D.Dataset(x, np.array([[0], [1]]), x, np.array([1, 0]), num_classes=2)
        assert ds.x_train.dtype == np.uint8  # lossless -> uint8
        np.testing.assert_array_equal(ds.x_train, np.rint(x * 255).astype(np.uint8))
        assert ds.y_train.shape == (2,) and ds.y_train.dtype == np.int64
        x2 = x * 0.5 + 0.001  # not representable in uint8
        ds2 = D.Dataset(x2, [0, 1], x2, [1, 0], num_classes=2)
        assert ds2.x_train.dtype == np.float32
        assert "x_train=(2, 4, 4, 3) uint8" in repr(ds)

    def test_errors(self):
        x = np.zeros((2, 4, 4, 3), np.uint8)
        with pytest.raises(ValueError, match=r"same length.*len\(x_train\)=2, len\(y_train\)=3"):
            D.Dataset(x, [0, 1, 0], x, [0, 1], num_classes=2)
        with pytest.raises(ValueError, match="same image shape"):
            D.Dataset(x, [0, 1], np.zeros((2, 5, 5, 3), np.uint8), [0, 1], num_classes=2)
        with pytest.raises(ValueError, match="y_test"):
            D.Dataset(x, [0, 1], x, [0, 2], num_classes=2)
        with pytest.raises(ValueError, match="class_names"):
            D.Dataset(x, [0, 1], x, [0, 1], num_classes=2, class_names=["a"])

    def test_subset_is_evenly_strided(self):
        n = 100
        x = np.zeros((n, 2, 2, 3), np.uint8)
        y = np.repeat(np.arange(10), 10)  # sorted by class
        ds = D.Dataset(x, y, x, y, num_classes=10)
        sub = ds.subset(n_train=20, n_test=10)
        np.testing.assert_array_equal(sub.y_test, np.arange(10))
        np.testing.assert_array_equal(np.bincount(sub.y_train), [2] * 10)
        assert sub.subset().x_train.shape == (20, 2, 2, 3)
        with pytest.raises(ValueError, match=r"at most.*\(100\).*n_test=101"):
            ds.subset(n_test=101)
        with pytest.raises(ValueError, match="`n_train` must be a positive integer"):
            ds.subset(n_train=0)

    def test_load_applies_subset(self):
        ds = D.load("synthetic", n_train=16, n_test=8)
        assert len(ds.x_train) == 16 and len(ds.x_test) == 8


# --- .npz -----------------------------------------------------------------------


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


class TestNpz:
    def _arrays(self, n=6, dtype=np.uint8):
        x = _random_images(n, 8, 8, 3)
        if dtype != np.uint8:
            x = x.astype(dtype) / 255
        y = (np.arange(n) % 3).reshape(-1, 1).astype(np.uint8)
        return dict(x_train=x, y_train=y, x_test=x[:4], y_test=y[:4, 0])

    def test_round_trip_uint8(self, tmp_path):
        arrays = self._arrays()
        ds = D.load(_write_npz(tmp_path / "mine.npz", **arrays))
        np.testing.assert_array_equal(ds.x_train, arrays["x_train"])
        np.testing.assert_array_equal(ds.y_train, arrays["y_train"][:, 0])
        assert ds.num_classes == 3 and ds.name == "mine"
        assert ds.y_test.dtype == np.int64

    def test_round_trip_float_and_num_classes(self, tmp_path):
        arrays = self._arrays(dtype=np.float64)
        path = _write_npz(tmp_path / "f.npz", **arrays)
        ds = D.load(path, num_classes=5)
        assert ds.num_classes == 5 and ds.x_train.dtype == np.uint8
        np.testing.assert_array_equal(ds.x_train, self._arrays()["x_train"])

    def test_relative_path_in_data_dir(self, tmp_path):
        _write_npz(tmp_path / "rel.npz", **self._arrays())
        ds = D.load("rel.npz", data_dir=str(tmp_path))
        assert len(ds.x_train) == 6

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="not found"):
            D.load(str(tmp_path / "nope.npz"))

    def test_missing_keys_are_named(self, tmp_path):
        arrays = self._arrays()
        del arrays["y_test"], arrays["x_test"]
        path = _write_npz(tmp_path / "m.npz", **arrays)
        with pytest.raises(ValueError, match=r"missing the array\(s\) \['x_test', 'y_test'\]"):
            D.load(path)

    @pytest.mark.parametrize(
        "key,value,pattern",
        [
            ("x_train", np.zeros((6, 8, 8), np.uint8), r"x_train.*\(N, H, W, C\)"),
            ("x_train", np.zeros((6, 8, 8, 4), np.uint8), r"x_train.*1 or 3 channels"),
            ("x_train", np.zeros((6, 8, 8, 3), np.int32), r"x_train.*dtype=int32"),
            (
                "x_test",
                np.full((4, 8, 8, 3), 2.0),
                r"`x_test` pixel values must be in \[0, 1\].*x_test / 255",
            ),
            ("y_train", np.zeros(5, np.int64), r"same length.*len\(y_train\)=5"),
            ("y_train", np.eye(6, 3), r"y_train.*argmax"),
            ("x_test", np.zeros((4, 6, 6, 3), np.uint8), "same image shape"),
        ],
    )
    def test_malformed(self, tmp_path, key, value, pattern):
        arrays = self._arrays()
        arrays[key] = value
        path = _write_npz(tmp_path / "bad.npz", **arrays)
        with pytest.raises(ValueError, match=pattern) as info:
            D.load(path)
        assert "bad.npz" in str(info.value)

    def test_negative_labels(self, tmp_path):
        arrays = self._arrays()
        arrays["y_test"] = -arrays["y_test"].astype(np.int64) - 1
        path = _write_npz(tmp_path / "neg.npz", **arrays)
        with pytest.raises(ValueError, match="`y_test` labels must be non-negative"):
            D.load(path)

    def test_labels_out_of_range_for_num_classes(self, tmp_path):
        path = _write_npz(tmp_path / "r.npz", **self._arrays())
        with pytest.raises(ValueError, match=r"y_train.*\[0, 2\).*num_classes=2"):
            D.load(path, num_classes=2)


# --- CIFAR through tensorflow-datasets (mocked) -----------------------------------


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_with_mocked_tfds(tfds, tmp_path, name, classes):
    with tfds.testing.mock_data(num_examples=12):
        ds = D.load(name, data_dir=str(tmp_path))
    assert ds.x_train.shape == (12, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (12, 32, 32, 3)
    assert ds.y_train.dtype == np.int64 and ds.y_train.max() < classes
    assert ds.num_classes == classes and ds.name == name
    if name == "cifar10":
        assert ds.class_names[0] == "airplane" and len(ds.class_names) == 10
    assert not os.listdir(tmp_path)  # nothing downloaded or prepared


def test_cifar_load_error_says_what_to_do(tfds, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no network")

    class Reachable:  # the download host answers; tensorflow-datasets itself fails
        def close(self):
            pass

    monkeypatch.setattr(tfds, "load", broken)
    monkeypatch.setattr(cifar.socket, "create_connection", lambda *args, **kwargs: Reachable())
    with pytest.raises(RuntimeError, match=r"no network.*tfds build cifar10.*\.npz"):
        D.load("cifar10")


# --- Tiny-ImageNet (fake folder) -----------------------------------------------------

_WNIDS = ("n03000000", "n01000000", "n02000000")  # created unsorted on purpose
_COLOURS = {
    "n01000000": (200, 30, 30),
    "n02000000": (30, 200, 30),
    "n03000000": (30, 30, 200),
}


def _make_tiny(base, grey_val=True):
    from PIL import Image

    root = base / "tiny-imagenet-200"
    for wnid in _WNIDS:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
        for j in range(2):
            Image.new("RGB", (64, 64), _COLOURS[wnid]).save(folder / f"{wnid}_{j}.JPEG")
    val = root / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(("n02000000", "n01000000", "n03000000", "n01000000")):
        name = f"val_{i}.JPEG"
        if i == 3 and grey_val:
            Image.new("L", (64, 64), 128).save(val / name)
        else:
            Image.new("RGB", (64, 64), _COLOURS[wnid]).save(val / name)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unused split
    return root


class TestTinyImageNet:
    def test_load(self, tmp_path):
        _make_tiny(tmp_path)
        ds = D.load("tiny_imagenet", data_dir=str(tmp_path))
        assert ds.num_classes == 3 and ds.class_names == sorted(_WNIDS)
        assert ds.x_train.shape == (6, 64, 64, 3) and ds.x_train.dtype == np.uint8
        assert ds.x_test.shape == (4, 64, 64, 3)
        # class index = position in the sorted wnids
        np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1, 2, 2])
        np.testing.assert_array_equal(ds.y_test, [1, 0, 2, 0])
        for x, y in zip(ds.x_train, ds.y_train, strict=True):
            colour = _COLOURS[sorted(_WNIDS)[y]]
            np.testing.assert_allclose(x.reshape(-1, 3).mean(0), colour, atol=4)  # uint8 levels after JPEG compression
        # greyscale val image converted to RGB (three equal channels)
        grey = ds.x_test[3].astype(int)
        assert np.array_equal(grey[..., 0], grey[..., 1])
        assert np.array_equal(grey[..., 0], grey[..., 2])
        assert abs(grey.mean() - 128) < 3

    def test_cache(self, tmp_path, monkeypatch):
        root = _make_tiny(tmp_path)
        first = D.load("tiny_imagenet", data_dir=str(tmp_path))
        cache = tmp_path / "tiny-imagenet-200.keras_rpat.npz"
        assert cache.is_file()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

        def no_decode(paths):
            raise AssertionError("should have used the cache")

        monkeypatch.setattr(tiny_imagenet, "_decode_images", no_decode)
        again = D.load("tiny_imagenet", data_dir=str(root))  # the folder itself
        np.testing.assert_array_equal(first.x_train, again.x_train)
        np.testing.assert_array_equal(first.y_test, again.y_test)
        # A changed folder invalidates the cache.
        from PIL import Image

        Image.new("RGB", (64, 64)).save(root / "train" / "n01000000" / "images" / "z.JPEG")
        with pytest.raises(AssertionError, match="should have used the cache"):
            D.load("tiny_imagenet", data_dir=str(tmp_path))

    def test_cache_dir_and_no_cache(self, tmp_path):
        _make_tiny(tmp_path / "data")
        D.load("tiny_imagenet", data_dir=str(tmp_path / "data"), use_cache=False)
        assert not list((tmp_path / "data").glob("*.npz"))
        D.load(
            "tiny_imagenet",
            data_dir=str(tmp_path / "data"),
            cache_dir=str(tmp_path / "c"),
        )
        assert (tmp_path / "c" / "tiny-imagenet-200.keras_rpat.npz").is_file()

    def test_default_data_dir_from_environment(self, tmp_path, monkeypatch):
        _make_tiny(tmp_path)
        monkeypatch.setenv("KERAS_RPAT_DATA_DIR", str(tmp_path))
        assert D.default_data_dir() == str(tmp_path)
        ds = D.load("tiny-imagenet", use_cache=False)  # alias
        assert ds.num_classes == 3

    def test_unwritable_cache_warns(self, tmp_path):
        _make_tiny(tmp_path)
        blocker = tmp_path / "not_a_dir"
        blocker.write_text("")
        with pytest.warns(UserWarning, match="Could not write the Tiny-ImageNet cache"):
            ds = D.load("tiny_imagenet", data_dir=str(tmp_path), cache_dir=str(blocker))
        assert len(ds.x_train) == 6

    def test_missing_folder(self, tmp_path):
        with pytest.raises(FileNotFoundError) as info:
            D.load("tiny_imagenet", data_dir=str(tmp_path))
        msg = str(info.value)
        assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in msg
        assert os.path.join(str(tmp_path), "tiny-imagenet-200", "train") in msg

    def test_missing_annotations(self, tmp_path):
        root = _make_tiny(tmp_path)
        (root / "val" / "val_annotations.txt").unlink()
        with pytest.raises(FileNotFoundError, match="val_annotations.txt is missing"):
            D.load("tiny_imagenet", data_dir=str(tmp_path))

    def test_unknown_val_wnid(self, tmp_path):
        root = _make_tiny(tmp_path)
        ann = root / "val" / "val_annotations.txt"
        ann.write_text(ann.read_text().replace("n02000000", "n09999999"))
        with pytest.raises(ValueError, match="'n09999999', which is not a class folder"):
            D.load("tiny_imagenet", data_dir=str(tmp_path))

    def test_missing_val_image(self, tmp_path):
        root = _make_tiny(tmp_path)
        (root / "val" / "images" / "val_1.JPEG").unlink()
        with pytest.raises(FileNotFoundError, match="val_1.JPEG is listed"):
            D.load("tiny_imagenet", data_dir=str(tmp_path))

    def test_reorganised_val_layout(self, tmp_path):
        # Layout after RPAT_Benchmarks/tiny_pre.py: val/<wnid>/images/*.JPEG
        root = _make_tiny(tmp_path)
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            name, wnid = line.split("\t")[:2]
            dest = root / "val" / wnid / "images"
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(root / "val" / "images" / name, dest / name)
        (root / "val" / "images").rmdir()
        ds = D.load("tiny_imagenet", data_dir=str(tmp_path), use_cache=False)
        np.testing.assert_array_equal(ds.y_test, [0, 0, 1, 2])


# ---------------------------------------------------------------------------
# Augmentation pipeline
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_is_shifted_copy_of_padded_image(mode):
    x = _random_images(64, 8, 8, 3)
    seq = D.TrainSequence(x, np.zeros(64, int), batch_size=64, shuffle=False, pad_mode=mode)
    xb, _ = seq[0]
    assert xb.dtype == np.float32 and xb.shape == (64, 8, 8, 3)
    keys = []
    for out, src in zip(xb, x, strict=True):
        match = _match(out, src, 4, mode)
        # (reflect padding makes a few extreme crops equal to flipped neighbours)
        assert match, "each output must be a crop/flip of its padded source"
        keys.append(match[0])
    # drawn independently per image: many offsets and both flip states
    assert len({k[:2] for k in keys}) > 20
    assert 10 < sum(k[2] for k in keys) < 54


def test_zero_and_reflect_padding_differ():
    x = np.full((32, 8, 8, 3), 200, np.uint8)
    zero, _ = D.TrainSequence(x, np.zeros(32, int), batch_size=32, pad_mode="zero")[0]
    refl, _ = D.TrainSequence(x, np.zeros(32, int), batch_size=32, pad_mode="reflect")[0]
    assert (zero == 0).any()  # zero borders for shifted crops
    np.testing.assert_allclose(refl, 200 / 255, rtol=1e-6)  # reflecting a constant


def test_flip_mirrors():
    x = _random_images(32, 6, 6, 3)
    seq = D.TrainSequence(x, np.zeros(32, int), batch_size=32, shuffle=False, pad=0)
    xb, _ = seq[0]
    flipped = 0
    for out, src in zip(xb, x, strict=True):
        src = src.astype(np.float32) / 255
        if np.array_equal(out, src[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, src)
    assert 4 < flipped < 28


def test_no_augmentation_is_identity_and_float_input():
    x = _random_images(10, 6, 6, 3)
    seq = D.TrainSequence(x, np.arange(10), batch_size=10, shuffle=False, pad=0, flip=False)
    xb, yb = seq[0]
    np.testing.assert_array_equal(xb, x.astype(np.float32) / 255)
    np.testing.assert_array_equal(yb, np.arange(10))
    # float input in [0, 1] gets the same crops as uint8 input
    xf = x.astype(np.float32) / 255
    a, _ = D.TrainSequence(x, np.arange(10), batch_size=10, seed=5)[0]
    b, _ = D.TrainSequence(xf, np.arange(10), batch_size=10, seed=5)[0]
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_two_view():
    n = 24
    x = _random_images(n, 8, 8, 3)
    y = np.arange(n)  # unique ids identify the source image
    seq = D.TrainSequence(x, y, batch_size=8, two_view=True, num_classes=n)
    assert len(seq) == 3
    xb, yb = seq[1]
    assert xb.shape == (16, 8, 8, 3)
    np.testing.assert_array_equal(yb[:8], yb[8:])
    different = 0
    for k in range(8):
        src = x[yb[k]]
        assert _match(xb[k], src, 4, "zero") and _match(xb[8 + k], src, 4, "zero")
        different += not np.array_equal(xb[k], xb[8 + k])
    assert different >= 6  # independent draws


def test_cutmix_soft_labels_match_pasted_area():
    n, s = 16, 8
    # Constant images with unique values 10, 20, ...: a pixel's value says which
    # image it came from. No crop/flip and no shuffle, so output k is image k.
    ids = np.arange(n)
    x = np.broadcast_to((10 * (ids + 1)).astype(np.uint8)[:, None, None, None], (n, s, s, 3))
    lams = []
    for seed in range(8):
        seq = D.TrainSequence(
            x,
            ids,
            batch_size=n,
            shuffle=False,
            pad=0,
            flip=False,
            cutmix=True,
            num_classes=n,
            seed=seed,
        )
        xb, yb = seq[0]
        assert yb.shape == (n, n) and yb.dtype == np.float32
        np.testing.assert_allclose(yb.sum(1), 1.0, rtol=1e-6)
        src = np.rint(xb[..., 0] * 255).astype(int) // 10 - 1  # source id per pixel
        np.testing.assert_array_equal(xb[..., 0], xb[..., 2])
        # One box for the whole batch: every pasted region is the same rectangle.
        masks = [src[k] != k for k in range(n)]
        box = np.logical_or.reduce(masks)
        for m in masks:
            assert not m.any() or np.array_equal(m, box)
        area = int(box.sum())
        if area:
            rows, cols = np.nonzero(box)
            assert area == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
            partner = np.array([src[k][box][0] for k in range(n)])
            np.testing.assert_array_equal(np.sort(partner), ids)  # a permutation
            for k in range(n):  # the box holds one partner image only
                assert (src[k][box] == partner[k]).all()
        else:
            partner = ids
        lam = 1.0 - area / (s * s)
        lams.append(lam)
        eye = np.eye(n, dtype=np.float32)
        expected = lam * eye[ids] + (1.0 - lam) * eye[partner]
        np.testing.assert_allclose(yb, expected, atol=1e-6)
    assert len(set(np.round(lams, 6))) >= 3


def test_cutmix_with_crop_and_flip():
    ds = D.load("synthetic", n_train=50, n_test=8)
    seq = D.TrainSequence(
        ds.x_train,
        ds.y_train,
        batch_size=32,
        cutmix=True,
        num_classes=10,
        pad_mode="reflect",
    )
    xb, yb = seq[1]
    assert xb.shape == (18, 32, 32, 3) and yb.shape == (18, 10)
    np.testing.assert_allclose(yb.sum(1), 1.0, rtol=1e-6)
    assert 0.0 <= xb.min() and xb.max() <= 1.0


def test_last_partial_batch_kept():
    x = np.zeros((50_000, 4, 4, 3), np.uint8)
    seq = D.TrainSequence(x, np.zeros(50_000, int), batch_size=128)
    assert len(seq) == 391 and seq.num_batches == 391
    assert seq[390][0].shape == (80, 4, 4, 3)
    assert seq[-1][0].shape == (80, 4, 4, 3)
    with pytest.raises(IndexError):
        seq[391]
    ev = D.EvalSequence(x[:250], np.zeros(250, int), batch_size=100)
    assert len(ev) == 3 and ev[2][0].shape == (50, 4, 4, 3)


def test_epoch_covers_every_image_and_reshuffles():
    n = 100
    x = _random_images(n, 4, 4, 3)
    seq = D.TrainSequence(x, np.arange(n), batch_size=32, num_classes=n)
    order0 = np.concatenate([seq[i][1] for i in range(len(seq))])
    np.testing.assert_array_equal(np.sort(order0), np.arange(n))
    assert not np.array_equal(order0, np.arange(n))
    seq.on_epoch_end()
    order1 = np.concatenate([seq[i][1] for i in range(len(seq))])
    np.testing.assert_array_equal(np.sort(order1), np.arange(n))
    assert not np.array_equal(order0, order1)
    seq.set_epoch(0)
    np.testing.assert_array_equal(seq[0][1], order0[:32])
    noshuffle = D.TrainSequence(x, np.arange(n), batch_size=32, shuffle=False)
    np.testing.assert_array_equal(noshuffle[1][1], np.arange(32, 64))


def test_determinism():
    x = _random_images(64, 8, 8, 3)
    y = np.arange(64) % 10
    a = D.TrainSequence(x, y, batch_size=16, seed=7)
    b = D.TrainSequence(x, y, batch_size=16, seed=7)
    c = D.TrainSequence(x, y, batch_size=16, seed=8)
    late = b[2]  # request order does not matter
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[2][0], late[0])
    assert not np.array_equal(a[0][0], c[0][0])
    # the same batch index in the next epoch gets new draws
    first = a[0][0]
    a.on_epoch_end()
    assert not np.array_equal(first, a[0][0])


def test_channels_first():
    x = _random_images(20, 6, 8, 3)
    y = np.arange(20) % 4
    for kwargs in ({}, {"cutmix": True, "num_classes": 4}, {"two_view": True}):
        last, _ = D.TrainSequence(x, y, batch_size=8, seed=1, **kwargs)[0]
        first, _ = D.TrainSequence(x, y, batch_size=8, seed=1, data_format="channels_first", **kwargs)[0]
        assert first.shape == (last.shape[0], 3, 6, 8) and first.flags.c_contiguous
        np.testing.assert_array_equal(first, last.transpose(0, 3, 1, 2))
    ev = D.EvalSequence(x, y, batch_size=8, data_format="channels_first")
    np.testing.assert_array_equal(ev[0][0], (x[:8].astype(np.float32) / 255).transpose(0, 3, 1, 2))


def test_eval_sequence():
    x = _random_images(10, 4, 4, 3)
    ev = D.EvalSequence(x, np.arange(10), batch_size=4)
    xb, yb = ev[1]
    np.testing.assert_array_equal(xb, x[4:8].astype(np.float32) / 255)
    np.testing.assert_array_equal(yb, np.arange(4, 8))
    only_x = D.EvalSequence(x, batch_size=4)[2]
    assert isinstance(only_x, tuple) and len(only_x) == 1 and only_x[0].shape == (2, 4, 4, 3)


def test_sequence_argument_errors():
    x = np.zeros((4, 8, 8, 3), np.uint8)
    y = np.zeros(4, int)
    with pytest.raises(
        ValueError,
        match=r"`batch_size` must be a positive integer. Received: batch_size=0",
    ):
        D.TrainSequence(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer"):
        D.EvalSequence(x, y, batch_size=-1)
    with pytest.raises(ValueError, match="pad_mode"):
        D.TrainSequence(x, y, pad_mode="edge")
    with pytest.raises(ValueError, match="`pad` must be a non-negative integer"):
        D.TrainSequence(x, y, pad=-1)
    with pytest.raises(ValueError, match="smaller than the image"):
        D.TrainSequence(x, y, pad=8, pad_mode="reflect")
    with pytest.raises(ValueError, match="`num_classes` is required when `cutmix=True`"):
        D.TrainSequence(x, y, cutmix=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        D.TrainSequence(x, y, cutmix=True, two_view=True, num_classes=2)
    with pytest.raises(ValueError, match="data_format"):
        D.TrainSequence(x, y, data_format="NCHW")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        D.TrainSequence(x, np.array([0, 1, 2, 0]), num_classes=2)
    with pytest.raises(ValueError, match=r"same length"):
        D.TrainSequence(x, np.zeros(3, int))
    with pytest.raises(ValueError, match=r"dtype=int64"):
        D.TrainSequence(x.astype(np.int64), y)
    with pytest.raises(ValueError, match=r"`seed` must be a non-negative integer"):
        D.TrainSequence(x, y, seed=-1)


def test_make_datasets():
    ds = D.load("synthetic", n_train=64, n_test=40)
    train, test = D.make_datasets(ds, batch_size=16)
    assert train.pad_mode == "zero" and train.pad == 4 and train.flip and train.shuffle
    assert test.batch_size == 100 and len(train) == 4
    train, test = D.make_datasets(ds, batch_size=16, pipeline="sotas", cutmix=True, seed=3)
    assert train.pad_mode == "reflect" and test.batch_size == 128
    assert train.cutmix and train.num_classes == 10 and train.seed == 3
    config = train.get_config()
    assert config["pad_mode"] == "reflect" and config["num_examples"] == 64
    assert test.get_config() == {
        "num_examples": 40,
        "batch_size": 128,
        "data_format": "channels_last",
    }
    assert train[0][1].shape == (16, 10)
    train, _ = D.make_datasets("synthetic", batch_size=256, two_view=True)
    assert train[0][0].shape == (512, 32, 32, 3)
    with pytest.raises(ValueError, match=r"`pipeline` must be one of \['bench', 'sotas'\]"):
        D.make_datasets(ds, pipeline="fast")


@pytest.mark.parametrize("cutmix", [False, True])
def test_fit_and_evaluate_with_sequences(cutmix):
    ds = D.load("synthetic", n_train=48, n_test=20, image_size=8, num_classes=3)
    train, test = D.make_datasets(ds, batch_size=16, cutmix=cutmix)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    loss = (
        keras.losses.CategoricalCrossentropy(from_logits=True)
        if cutmix
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.compile(optimizer="sgd", loss=loss)
    history = model.fit(train, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert train.epoch >= 2  # reshuffled by Keras' on_epoch_end calls
    if not cutmix:
        model.compile(
            optimizer="sgd",
            loss=loss,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        )
        result = model.evaluate(test, verbose=0, return_dict=True)
        assert 0.0 <= result["acc"] <= 1.0


def test_cutmix_soft_target_equals_mixed_cross_entropy():
    # CE with the soft target == lam * CE(y_a) + (1 - lam) * CE(y_b)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype("float32")
    ya, yb, lam = np.array([0, 1, 2, 3, 0]), np.array([1, 1, 0, 2, 3]), 0.3
    eye = np.eye(4, dtype="float32")
    soft = lam * eye[ya] + (1 - lam) * eye[yb]
    cce = keras.losses.CategoricalCrossentropy(from_logits=True)
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mixed = lam * float(scce(ya, logits)) + (1 - lam) * float(scce(yb, logits))
    np.testing.assert_allclose(float(cce(soft, logits)), mixed, rtol=1e-5)


# --- Real downloads (only with --run-download) -------------------------------------


@pytest.mark.download
def test_cifar10_downloads_and_loads_in_the_reference_layout(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    ds = D.load("cifar10", data_dir=str(tmp_path))
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
