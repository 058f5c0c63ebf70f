"""The `make demo` / `keras-rpat demo` job: PGD-AT vs PGD-AT + RPAT on synthetic data."""

import time

import keras

from keras_rpat import _io
from keras_rpat import attacks, datasets, evaluation, models, presets
from keras_rpat import backend as rpat_backend

DEMO_METHODS = ("pgd_at", "pgd_at+rpat")


def run_demo(
    epochs=4,
    n_train=2048,
    n_test=512,
    batch_size=128,
    seed=0,
    methods=DEMO_METHODS,
    widths=(16, 32, 64),
    contrast=0.3,
    echo=None,
    verbose=2,
):
    """Trains each method on the built-in synthetic dataset and evaluates it.

    Returns a list of dicts with `method`, `clean`, `pgd20` (percent) and
    `seconds` (training + evaluation wall time).
    """
    data = datasets.load("synthetic", n_train=n_train, n_test=n_test, seed=seed, contrast=contrast)
    rows = []
    for method in methods:
        rpat_backend.set_random_seed(seed)
        preset = presets.get(method).with_epochs(epochs)
        classifier = models.get("small_cnn", num_classes=data.num_classes, input_shape=data.image_shape, widths=widths)
        pgd20 = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=evaluation.PGD_EVAL_STEPS, seed=seed)
        trainer = preset.build_trainer(classifier, eval_attack=pgd20)
        train_seq, test_seq = datasets.make_datasets(data, batch_size=batch_size, pipeline=preset.pipeline, seed=seed)
        trainer.compile(optimizer=preset.optimizer(steps_per_epoch=len(train_seq)))
        if echo:
            echo(f"\n== {method}: {preset.describe()}")
        start = time.perf_counter()
        trainer.fit(train_seq, epochs=epochs, verbose=verbose)
        logs = trainer.evaluate(test_seq, verbose=0, return_dict=True)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "method": method,
                "clean": 100.0 * float(logs["clean_acc"]),
                "pgd20": 100.0 * float(logs["adv_acc"]),
                "seconds": seconds,
                "epochs": epochs,
            }
        )
    return rows


def format_table(rows):
    """A Markdown table of the demo results."""
    lines = [
        "| method | clean acc (%) | PGD-20 acc (%) | time (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['clean']:.2f} | {r['pgd20']:.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def save_rows(rows, path):
    """Writes the rows as JSON, atomically."""
    _io.atomic_write_json(path, {"backend": keras.config.backend(), "rows": rows})
