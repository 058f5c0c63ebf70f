"""Generated data mixed into every batch (keras_rpat.datasets.generated, Wang et al. 2023's sampler).

The expected batch composition is written from the reference sampler
(DM-Improves-AT, core/data/semisup.py, `SemiSupervisedSampler`): a batch takes
the next `B - int(B * f)` real images of the epoch's shuffled order and fills up
to `B` with generated images drawn uniformly with replacement; an epoch has
`ceil(N / B)` batches. Every row of a batch is traced back to its source by its
pixels (augmentation off), so the tests count, rather than trust, the mix.
"""

import json
import math
import mmap
import os
import pickle
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

from keras_rpat import datasets as D
from keras_rpat import recipes
from keras_rpat.recipes import experiment
from keras_rpat.recipes import schema
from keras_rpat.cli import train as cli_train
from tests.testing import invoke

N_REAL, N_GEN, SIZE = 100, 300, 8


def _images(n, seed, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real images of classes 0-4 and a generated `.npz` of classes 5-9, so a label tells the source."""
    rng = np.random.default_rng(0)
    x_real, y_real = _images(N_REAL, 1), rng.integers(0, 5, N_REAL)
    x_gen, y_gen = _images(N_GEN, 2), rng.integers(5, 10, N_GEN)
    path = str(tmp_path_factory.mktemp("generated") / "gen.npz")
    np.savez(path, image=x_gen, label=y_gen)
    return x_real, y_real, x_gen, y_gen, path


def _seq(data, batch_size=20, fraction=0.7, seed=0, **kwargs):
    x_real, y_real, _, _, path = data
    kwargs = {"pad": 0, "flip": False, **kwargs}
    return D.TrainSequence(
        x_real,
        y_real,
        batch_size=batch_size,
        num_classes=10,
        seed=seed,
        generated=path,
        generated_fraction=fraction,
        **kwargs,
    )


def _mapping(array):
    """The `mmap` under `array` (None for an array in memory)."""
    while isinstance(array, np.ndarray):
        array = array.base
    if isinstance(array, memoryview):  # np.frombuffer's
        array = array.obj
    return array if isinstance(array, mmap.mmap) else None


def _sources(batch_x, data):
    """For each row of a float batch: ("real" | "gen", index), found by its pixels."""
    x_real, _, x_gen, _, _ = data
    lookup = {x.tobytes(): ("real", i) for i, x in enumerate(x_real)}
    lookup.update({x.tobytes(): ("gen", i) for i, x in enumerate(x_gen)})
    return [lookup[np.rint(x * 255).astype(np.uint8).tobytes()] for x in batch_x]


# ---------------------------------------------------------------------------
# The memory map
# ---------------------------------------------------------------------------


def test_open_maps_the_file_without_reading_it(tmp_path):
    x, y = _images(2000, 3, size=32), np.arange(2000) % 10  # 6 MB of images
    path = str(tmp_path / "big.npz")
    np.savez(path, image=x, label=y)
    tracemalloc.start()
    try:
        g = D.GeneratedData.open(path, num_classes=10, image_shape=(32, 32, 3))
        opened = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        xb, yb = g.rows([1999, 5, 700])
        read = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # np.load would allocate the 6 MB; the map allocates only the labels' checks (16 KB each).
    assert opened < 200_000, opened
    assert read < 50_000, read  # three images: 9 KB
    assert _mapping(g.images) is not None and _mapping(g.labels) is _mapping(g.images)
    assert _mapping(g.images).size() == os.path.getsize(path) and not g.images.flags.writeable
    with np.load(path) as f:  # the mapped bytes are the stored arrays
        np.testing.assert_array_equal(g.images, f["image"])
        np.testing.assert_array_equal(g.labels, f["label"])
    np.testing.assert_array_equal(xb, x[[5, 700, 1999]])  # rows come back in sorted order
    np.testing.assert_array_equal(yb, y[[5, 700, 1999]])
    again = pickle.loads(pickle.dumps(g))  # a worker maps the file again; the images are not pickled
    assert _mapping(again.images) is not None and len(pickle.dumps(g)) < 1000


def test_npy_header_version_2_and_fortran_order(tmp_path):
    x, y = _images(7, 4), np.arange(7).reshape(7, 1) % 3
    path = str(tmp_path / "v2.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        with z.open("image.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asfortranarray(x), version=(2, 0))
        with z.open("label.npy", "w") as f:
            np.lib.format.write_array(f, y, version=(1, 0))
    g = D.GeneratedData.open(path, num_classes=3)
    assert g.images.flags.f_contiguous
    np.testing.assert_array_equal(g.images, x)
    np.testing.assert_array_equal(g.labels, y[:, 0])


def test_merge_parts_in_bounded_memory(tmp_path):
    x, y = _images(600, 5, size=32), np.repeat(np.arange(10), 60)  # sorted by class, as the EDM sets
    parts = [str(tmp_path / f"part{i}.npz") for i in range(3)]
    for path, rows in zip(parts, np.split(np.arange(600), [250, 400])):  # part0 holds classes 0-4 only
        np.savez(path, image=x[rows], label=y[rows])
    merged = str(tmp_path / "merged.npz")
    tracemalloc.start()
    try:
        D.merge_generated(parts, merged, num_classes=10, chunk_rows=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 250_000, peak  # the images are 1.8 MB, the largest part 0.8 MB; a chunk is 16 images (49 KB)
    with np.load(merged) as f:  # an ordinary .npz
        np.testing.assert_array_equal(f["image"], x)
        np.testing.assert_array_equal(f["label"], y)
    assert _mapping(D.GeneratedData.open(merged, num_classes=10).images) is not None
    assert sorted(os.listdir(tmp_path)) == ["merged.npz", "part0.npz", "part1.npz", "part2.npz"]  # no temporary left
    np.savez(parts[1], image=_images(3, 0), label=np.zeros(3, int))
    with pytest.raises(ValueError, match="one shape"):
        D.merge_generated(parts, merged, num_classes=10)


# ---------------------------------------------------------------------------
# The batches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size, fraction", [(20, 0.7), (20, 0.5), (10, 0.25), (64, 0.0625)])
def test_every_batch_has_the_reference_mix(data, batch_size, fraction):
    seq = _seq(data, batch_size=batch_size, fraction=fraction, seed=5)
    n_gen = int(batch_size * fraction)
    n_real = batch_size - n_gen
    assert len(seq) == math.ceil(N_REAL / batch_size)  # the epoch keeps the plain pipeline's length
    order = np.random.default_rng([5, 0]).permutation(N_REAL)  # the epoch's shuffled real images
    _, y_real, _, y_gen, _ = data
    mixed = False
    for i in range(len(seq)):
        x, y = seq[i]
        src = _sources(x, data)
        real = [j for kind, j in src if kind == "real"]
        gen = [j for kind, j in src if kind == "gen"]
        expected_real = order[i * n_real : (i + 1) * n_real]
        assert len(x) == len(y) == batch_size  # full, also the last batch (filled up with generated images)
        assert sorted(real) == sorted(expected_real.tolist())
        assert len(gen) == batch_size - len(expected_real)
        assert int(np.sum(y >= 5)) == len(gen)  # labels travel with their images
        np.testing.assert_array_equal(y, [y_real[j] if k == "real" else y_gen[j] for k, j in src])
        mixed |= any(k == "gen" for k, _ in src[: batch_size // 2])  # positions shuffled, not appended
    assert mixed
    if batch_size == 64:  # 100 real images, 60 per batch: the second batch has 40 real + 24 generated
        assert sum(k == "gen" for k, _ in _sources(seq[1][0], data)) == 24


def test_fraction_zero_gives_the_plain_batches(data):
    x_real, y_real, _, _, _ = data
    with pytest.warns(UserWarning, match="generated_fraction=0"):
        seq = _seq(data, fraction=0.0, pad=4, flip=True)
    plain = D.TrainSequence(x_real, y_real, batch_size=20, num_classes=10, seed=0)
    for i in range(len(plain)):
        for a, b in zip(seq[i], plain[i]):
            np.testing.assert_array_equal(a, b)


def test_generated_images_get_the_same_augmentation(data):
    seq = _seq(data, batch_size=50, fraction=0.5, flip=True)
    x_real, _, x_gen, _, _ = data
    seen = {"real": set(), "gen": set()}
    for i in range(len(seq)):
        x, _ = seq[i]
        for row in np.rint(x * 255).astype(np.uint8):
            for kind, pool in (("real", x_real), ("gen", x_gen)):
                if (pool == row).all(axis=(1, 2, 3)).any():
                    seen[kind].add("as is")
                if (pool == row[:, ::-1]).all(axis=(1, 2, 3)).any():
                    seen[kind].add("flipped")
    assert seen == {"real": {"as is", "flipped"}, "gen": {"as is", "flipped"}}


def test_deterministic_per_seed_and_epoch(data):
    a, b, other = _seq(data, seed=3, pad=4, flip=True), _seq(data, seed=3, pad=4, flip=True), _seq(data, seed=4)
    b_batches = [b[i] for i in reversed(range(len(b)))][::-1]  # asked in another order
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b_batches[i][0])
        np.testing.assert_array_equal(a[i][1], b_batches[i][1])
    assert not np.array_equal(a[0][1], other[0][1])
    plain = _seq(data)
    first = _sources(plain[0][0], data)
    plain.on_epoch_end()  # a new epoch draws other generated images, not only another real order
    assert sorted(j for k, j in _sources(plain[0][0], data) if k == "gen") != sorted(j for k, j in first if k == "gen")


def test_resume_mid_epoch_gives_the_uninterrupted_batches(data):
    run = _seq(data, pad=4, flip=True, cutmix=True)
    uninterrupted = []
    run.on_epoch_end()  # `fit` calls it before the first epoch too
    for _ in range(2):
        uninterrupted.append([run[i] for i in range(len(run))])
        run.on_epoch_end()
    resumed = pickle.loads(pickle.dumps(_seq(data, pad=4, flip=True, cutmix=True)))  # a fresh process
    resumed.set_epoch(2)  # killed after 2 batches of the second epoch
    rest = D.BatchesFrom(resumed, 2)
    assert len(rest) == len(run) - 2
    for i in range(len(rest)):
        for a, b in zip(rest[i], uninterrupted[1][2 + i]):
            np.testing.assert_array_equal(a, b)


def test_two_view_and_float_real_images(data):
    x_real, y_real, _, _, path = data
    seq = _seq(data, two_view=True)
    x, y = seq[0]
    assert x.shape == (40, SIZE, SIZE, 3) and int(np.sum(y >= 5)) == 2 * 14
    np.testing.assert_array_equal(y[:20], y[20:])
    floats = D.TrainSequence(
        x_real / np.float32(255),
        y_real,
        batch_size=20,
        num_classes=10,
        pad=0,
        flip=False,
        generated=path,
        generated_fraction=0.7,
    )
    np.testing.assert_allclose(floats[0][0], _seq(data)[0][0], atol=1e-6)


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


def _write(tmp_path, compressed=False, **arrays):
    path = str(tmp_path / "bad.npz")
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize(
    "arrays, compressed, match",
    [
        ({"image": _images(4, 0)}, False, r"missing the array\(s\) \['label'\]"),
        ({"x": _images(4, 0), "y": np.zeros(4, int)}, False, r"missing the array\(s\) \['image', 'label'\].*Found"),
        ({"image": _images(4, 0) / 255.0, "label": np.zeros(4, int)}, False, "must be uint8"),
        ({"image": _images(4, 0, size=16), "label": np.zeros(4, int)}, False, "shape of the training images"),
        ({"image": _images(4, 0)[:, :, :, 0], "label": np.zeros(4, int)}, False, r"\(N, H, W, C\)"),
        ({"image": _images(4, 0), "label": np.array([0, 1, 10, 2])}, False, r"in \[0, 10\).*label\[2\]=10"),
        ({"image": _images(4, 0), "label": np.array([0, -1, 1, 2])}, False, r"label\[1\]=-1"),
        ({"image": _images(4, 0), "label": np.array(["a", "b", "c", "d"])}, False, "integer class indices"),
        ({"image": _images(4, 0), "label": np.zeros(3, int)}, False, "same length"),
        ({"image": _images(4, 0), "label": np.zeros(4, int)}, True, "savez_compressed.*np.savez"),
    ],
)
def test_bad_files_are_refused_with_the_fix(tmp_path, arrays, compressed, match):
    path = _write(tmp_path, compressed, **arrays)
    with pytest.raises(ValueError, match=match) as e:
        D.GeneratedData.open(path, num_classes=10, image_shape=(SIZE, SIZE, 3))
    assert path in str(e.value)


def test_missing_or_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz.*`image`"):
        D.GeneratedData.open(tmp_path / "nope.npz", num_classes=10)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz file"):
        D.GeneratedData.open(tmp_path / "text.npz", num_classes=10)
    np.savez(tmp_path / "rel.npz", image=_images(2, 0), label=np.array([0, 9]))
    assert len(D.GeneratedData.open("rel.npz", num_classes=10, data_dir=tmp_path)) == 2  # looked up in data_dir


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1, True, "x", float("nan")])
def test_bad_fraction(data, fraction):
    with pytest.raises(ValueError, match="generated_fraction"):
        _seq(data, fraction=fraction)


def test_bad_pipeline_arguments(data):
    x_real, y_real, x_gen, y_gen, path = data
    with pytest.raises(ValueError, match="needs generated data"):
        D.TrainSequence(x_real, y_real, num_classes=10, generated_fraction=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        D.TrainSequence(x_real, y_real, generated=path, generated_fraction=0.5)
    with pytest.raises(ValueError, match="`generated` must be"):
        D.TrainSequence(x_real, y_real, num_classes=10, generated=[x_gen, y_gen], generated_fraction=0.5)
    with pytest.warns(UserWarning, match="rounds down to no generated image"):
        _seq(data, batch_size=2, fraction=0.3)
    with pytest.warns(UserWarning, match="only reach class 9 of num_classes=100"):
        D.GeneratedData(x_gen, y_gen, num_classes=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seq = D.TrainSequence(x_real, y_real, num_classes=10, generated=(x_gen, y_gen), generated_fraction=0.5)
    assert seq.get_config()["num_generated_images"] == N_GEN


# ---------------------------------------------------------------------------
# Recipes and the command line
# ---------------------------------------------------------------------------


def test_recipe_and_run_settings(tmp_path):
    assert schema.validate_generated("r", {}) == {}
    with pytest.raises(recipes.RecipeError, match="`generated_data` needs `generated_fraction`"):
        schema.validate_generated("r", {"generated_data": "1m.npz"})
    with pytest.raises(recipes.RecipeError, match=r"in \(0, 1\). Received: generated_fraction=1"):
        schema.validate_generated("r", {"generated_data": "1m.npz", "generated_fraction": 1})
    plain = recipes.single_run("pgd_at", "cifar10")
    assert "generated" not in plain.to_dict()  # runs without it keep their fingerprint
    spec = recipes.single_run("pgd_at", "cifar10", generated_data=tmp_path / "1m.npz")
    assert spec.generated == {"path": str(tmp_path / "1m.npz"), "fraction": 0.7}  # Wang et al. 2023's default
    assert "0.7 of each batch generated" in spec.describe()
    with pytest.raises(FileNotFoundError, match="1m.npz"):
        experiment.preflight([spec], None)  # before any training
    document, _ = schema.read_recipe("table3")
    document["config"].update(generated_data="edm/1m.npz", generated_fraction=0.5)
    recipe = recipes.Recipe.from_dict(document)
    assert {json.dumps(r.generated) for r in recipe.runs()} == {'{"path": "edm/1m.npz", "fraction": 0.5}'}
    assert "generated_fraction: 0.5" in recipe.describe()
    assert all("generated" not in r.to_dict() for r in recipes.load_recipe("table3").runs())


def test_cli_train_smoke_mixes_generated_data(tmp_path):
    out = tmp_path / "run"
    args = ["--method", "pgd_at", "--dataset", "cifar10", "--smoke", "--verbose", "0", "--out", out]
    args += ["--eval-attacks", "clean", "--checkpoints", "final"]  # the training is what is tested
    res = invoke(cli_train.train_command, args + ["--generated-data", "edm/1m.npz", "--generated-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())["config"]["data"]
    assert data["generated"] == {"path": "edm/1m.npz", "fraction": 0.5, "n": 64, "per_batch": 16}
    bad = invoke(cli_train.train_command, args + ["--generated-fraction", "0.5"])
    assert bad.exit_code == 2 and "needs generated data" in bad.output
