"""A few training steps of a preset, in one process, as one rank under torchrun, or under tf.distribute.

    torchrun --nproc_per_node=2 tests/distributed_worker.py OUT.npz pgd_at+rpat trades+rpat:float64:keras
    python tests/distributed_worker.py OUT.npz pgd_at+rpat          # one process
    KERAS_BACKEND=tensorflow python tests/distributed_worker.py OUT.npz pgd_at+rpat --strategy mirrored --cpus 2
    TF_CONFIG=... KERAS_BACKEND=tensorflow python tests/distributed_worker.py OUT.npz pgd_at+rpat --strategy multiworker

A run is `method[:dtype[:path]]`, path `fast` (default) or `keras`.

For each method: a small CNN on fixed 8x8 synthetic batches, `STEPS` steps of
the global batch `BATCH` through `trainer.fit`; rank 0 (or the lone process)
writes every variable of the trainer (classifier, teacher) and the logged
metrics to OUT.npz. `tests/test_distributed.py` compares the runs.
"""

import argparse
import contextlib

import keras
import numpy as np

import keras_rpat

BATCH = 8
STEPS = 3
ATTACK_STEPS = 2


class Batches(keras.utils.PyDataset):
    """`STEPS` fixed global batches (the same on every rank)."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.x = rng.uniform(0.0, 1.0, (STEPS, BATCH, 8, 8, 3)).astype("float32")
        self.y = rng.integers(0, 10, (STEPS, BATCH)).astype("int64")

    def __len__(self):
        return STEPS

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def train(method, sync_batchnorm, fast_path, dtype="float32", strategy=None):
    """Trains `method` for `STEPS` steps (built in `strategy`'s scope, if given);
    returns `{name: array}` of variables and logs."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype)
    preset = keras_rpat.presets.get(method)
    attack = preset.attack.__class__.from_config({**preset.attack.get_config(), "num_steps": ATTACK_STEPS, "seed": 1})
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3))
        trainer = preset.build_trainer(
            model,
            attack=attack,
            seed=2,
            sync_batchnorm=sync_batchnorm,
            fast_path=fast_path,
            track_clean_accuracy=True,
        )
        trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4))
    initial = {f"{method}/initial/{v.path}": keras.ops.convert_to_numpy(v.value) for v in model.trainable_weights}
    history = trainer.fit(Batches(), epochs=1, verbose=0, shuffle=False)
    out = dict(initial)
    out |= {f"{method}/var/{v.path}": keras.ops.convert_to_numpy(v.value) for v in trainer.weights}
    for name, values in history.history.items():
        out[f"{method}/log/{name}"] = np.asarray(values, np.float64)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+", help="method[:dtype[:path]]")
    parser.add_argument("--no-sync-batchnorm", action="store_true")
    parser.add_argument("--strategy", choices=["mirrored", "multiworker"], help="tensorflow: a tf.distribute strategy")
    parser.add_argument("--cpus", type=int, default=1, help="tensorflow: logical CPU devices (for mirrored)")
    args = parser.parse_args()
    strategy = None
    if args.strategy is not None:
        import tensorflow as tf

        if args.cpus > 1:  # before TensorFlow initialises its devices
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpus)
        strategy = keras_rpat.backend.initialize_distributed(strategy=args.strategy).strategy
    results = {}
    for run in args.runs:
        method, dtype, path = (run.split(":") + ["float32", "fast"])[:3]
        results.update(train(method, not args.no_sync_batchnorm, path == "fast", dtype, strategy))
    job = keras_rpat.backend.distributed_context()
    if job is None or job.is_primary:
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
