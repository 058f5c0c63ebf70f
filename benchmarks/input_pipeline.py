"""Throughput of the keras_rpat NumPy input pipeline (images per second).

Iterates one epoch of `keras_rpat.datasets.TrainSequence` / `EvalSequence` over
random uint8 images of CIFAR size (and one Tiny-ImageNet-size row) in a single
process and prints images/s for each configuration: zero padding (Bench),
reflect padding (SOTAs), two views (Consistency-AT), CutMix, channels-first
output and plain evaluation batches. No download is needed. Results go to
`benchmarks/input_pipeline.json` (next to this file) unless `--output` says
otherwise.

The pipeline must stay well above what one GPU consumes in adversarial training
(about 1,400-3,800 images/s for PGD-10 + RPAT on an H200, PERFORMANCE.md); the
target is at least 10,000 images/s on 2 CPU cores.

`--synthetic-check` instead trains a tiny conv net on the built-in `synthetic`
dataset for a few epochs through `make_datasets` + `model.fit` and reports clean
and PGD-10 (L-inf 8/255) test accuracy: a quick check that the synthetic task is
learnable and stays partly learnable under attack.

Usage:
    python benchmarks/input_pipeline.py                  # full epoch, 50k images
    python benchmarks/input_pipeline.py --smoke          # a few seconds
    python benchmarks/input_pipeline.py --synthetic-check --epochs 6
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# keras_rpat first: it makes torch the default backend when KERAS_BACKEND is unset.
from keras_rpat import backend as rpat_backend  # noqa: E402, I001
from keras_rpat import datasets  # noqa: E402, I001

import keras  # noqa: E402

CONFIGS = [
    # name, image size, sequence kwargs (None = EvalSequence)
    ("eval (no augmentation)", 32, None),
    ("zero-pad crop + flip (bench)", 32, dict(pad_mode="zero")),
    ("reflect-pad crop + flip (sotas)", 32, dict(pad_mode="reflect")),
    ("two-view (consistency-at)", 32, dict(pad_mode="zero", two_view=True)),
    ("cutmix (sotas)", 32, dict(pad_mode="reflect", cutmix=True)),
    (
        "zero-pad, channels_first",
        32,
        dict(pad_mode="zero", data_format="channels_first"),
    ),
    ("zero-pad 64x64 (tiny-imagenet)", 64, dict(pad_mode="zero")),
]


def time_epoch(seq):
    """Seconds to produce every batch of one epoch (after one warm-up batch)."""
    seq[0]
    start = time.perf_counter()
    produced = 0
    for i in range(len(seq)):
        x, _ = seq[i]
        produced += x.shape[0]
    return time.perf_counter() - start, produced


def run_throughput(args):
    rng = np.random.default_rng(0)
    rows = []
    cache = {}
    for name, size, kwargs in CONFIGS:
        n = args.num_images if size == 32 else max(args.num_images // 4, 256)
        if size not in cache:
            cache[size] = (
                rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                rng.integers(0, 10, n),
            )
        x, y = cache[size]
        best = None
        for _ in range(args.repeats):
            if kwargs is None:
                seq = datasets.EvalSequence(x, y, batch_size=args.batch_size)
            else:
                seq = datasets.TrainSequence(x, y, batch_size=args.batch_size, num_classes=10, **kwargs)
            seconds, produced = time_epoch(seq)
            best = seconds if best is None else min(best, seconds)
        row = {
            "config": name,
            "image_size": size,
            "num_images": int(len(x)),
            "batch_size": args.batch_size,
            "seconds_per_epoch": round(best, 4),
            "images_per_s": round(len(x) / best, 1),
            "output_images_per_s": round(produced / best, 1),
        }
        rows.append(row)
        extra = f"  ({row['output_images_per_s']:,.0f} output images/s)" if produced != len(x) else ""
        print(f"{name:34s} {row['images_per_s']:>12,.0f} images/s{extra}", flush=True)
    return rows


def run_synthetic_check(args):
    rpat_backend.set_random_seed(0)
    ds = datasets.load("synthetic")
    train, test = datasets.make_datasets(ds, batch_size=64, pipeline="bench")
    model = keras.Sequential(
        [
            keras.Input(ds.image_shape),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(ds.num_classes),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(train, epochs=args.epochs, validation_data=test, verbose=2)
    train_seconds = time.perf_counter() - start
    x = ds.x_test.astype("float32") / 255.0
    y = ds.y_test
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    x_adv = pgd_linf(model, x, y)
    robust = float(np.mean(np.argmax(model.predict(x_adv, verbose=0), -1) == y))
    result = {
        "dataset": repr(ds),
        "epochs": args.epochs,
        "train_seconds": round(train_seconds, 1),
        "val_accuracy_per_epoch": [round(a, 4) for a in history.history["val_accuracy"]],
        "clean_test_accuracy": clean,
        "pgd10_linf_8_255_test_accuracy": robust,
        "chance": 1.0 / ds.num_classes,
    }
    print(json.dumps(result, indent=2))
    return result


def pgd_linf(model, x, y, epsilon=8 / 255, step_size=2 / 255, num_steps=10, seed=0):
    """A plain PGD-10 for this check only (the library's is keras_rpat.attacks)."""
    rng = np.random.default_rng(seed)
    delta = rng.uniform(-epsilon, epsilon, x.shape).astype("float32")
    delta = np.clip(x + delta, 0, 1) - x
    for _ in range(num_steps):
        grad = input_gradient(model, x + delta, y)
        delta = np.clip(delta + step_size * np.sign(grad), -epsilon, epsilon)
        delta = np.clip(x + delta, 0, 1) - x
    return (x + delta).astype("float32")


def input_gradient(model, x, y):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    backend = keras.config.backend()
    if backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        loss = loss_fn(torch.tensor(y), model(xt, training=False))
        (grad,) = torch.autograd.grad(loss, xt)
        return grad.cpu().numpy()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = loss_fn(y, model(xt, training=False))
        return tape.gradient(loss, xt).numpy()
    raise ValueError(f"Unsupported backend for the check: {backend}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="best of N epochs")
    parser.add_argument("--smoke", action="store_true", help="2,048 images, 1 repeat")
    parser.add_argument("--synthetic-check", action="store_true")
    parser.add_argument("--epochs", type=int, default=6, help="for --synthetic-check")
    parser.add_argument(
        "--output",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "input_pipeline.json"),
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_images, args.repeats = 2048, 1

    info = {
        "backend": keras.config.backend(),
        "numpy": np.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "process": "single process, one thread of Python (numpy may use more)",
    }
    print(
        f"keras_rpat input pipeline: backend={info['backend']} numpy={info['numpy']} cpus={info['cpu_count']}",
        flush=True,
    )
    if args.synthetic_check:
        result = {"info": info, "synthetic_check": run_synthetic_check(args)}
        output = os.path.splitext(args.output)[0] + "_synthetic_check.json"
    else:
        result = {"info": info, "results": run_throughput(args)}
        output = args.output
    if args.smoke:
        return result
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
