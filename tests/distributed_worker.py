"""A few training steps of a preset, in one process, as one rank under torchrun, or under tf.distribute.

    torchrun --nproc_per_node=2 tests/distributed_worker.py OUT.npz pgd_at+rpat trades+rpat:keras
    python tests/distributed_worker.py OUT.npz pgd_at+rpat          # one process
    KERAS_BACKEND=tensorflow python tests/distributed_worker.py OUT.npz pgd_at+rpat --strategy mirrored --cpus 2
    TF_CONFIG=... KERAS_BACKEND=tensorflow python tests/distributed_worker.py OUT.npz pgd_at+rpat --strategy multiworker

A run is `method[:path]`, path `fast` (default) or `keras`; a method ending in `+awp` trains with
`keras_rpat.AWP(gamma=AWP_GAMMA)`.

For each method, in float64 (`testing.float64_precision`: a batch split over
2 ranks rounds differently from the whole batch, and PGD's sign steps make that
a whole-step difference in float32): a small CNN on fixed 8x8 synthetic batches, `STEPS` steps of
the global batch `BATCH` through `trainer.fit`; rank 0 (or the lone process)
writes every variable of the trainer (classifier, teacher) and the logged
metrics to OUT.npz. `tests/test_distributed.py` compares the runs.

Then (`evaluate`) AutoAttack, PGD and the perception analysis of a fixed convnet
on `EVAL_N` images labelled with its own predictions (all clean-correct, so
the attacks have something to flip), in batches small enough that every rank
gets several: the adversarial images and accuracies go to OUT.npz too, with
what each rank printed and (`shared_folders`) each rank's view of a folder
after `share_folder`, and the job's `provenance`. Under a strategy (`tf_autoattack`): AutoAttack on the same
images, a PyTorch subprocess per replica (`--aa-resume`: then resumed from its state file).
"""

import argparse
import contextlib
import io
import json
import os

import keras
import numpy as np

import keras_rpat
import keras_rpat.backend  # an internal module: imported by name (the package loads its public API on first use)
from testing import float64_precision

BATCH = 8
STEPS = 3
ATTACK_STEPS = 2
EVAL_N = 22  # AutoAttack batches of 4: 6 batches (the last one short), dealt to the ranks in turn
AA_ATTACKS = ["square", "apgd-ce", "apgd-t"]  # Square first: its random squares are drawn per batch
AA_OPTIONS = {"apgd": {"n_iter": 3}, "apgd-t": {"n_iter": 3, "n_target_classes": 2}, "square": {"n_queries": 8}}
EVAL_EPSILON = 3 / 255
AWP_GAMMA = 0.02  # the size test_awp.py checks against the authors' algorithm


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


@float64_precision()
def train(method, sync_batchnorm, fast_path, strategy=None, data=None):
    """Trains `method` for `STEPS` steps in float64 (built in `strategy`'s scope, if given) on `data`
    (default `Batches()`); returns `{name: array}` of variables and logs."""
    keras.utils.set_random_seed(0)
    preset = keras_rpat.presets.get(method.removesuffix("+awp"))
    if method.endswith("+awp"):
        preset = preset.with_options(awp=keras_rpat.AWP(gamma=AWP_GAMMA))
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
    history = trainer.fit(Batches() if data is None else data, epochs=1, verbose=0, shuffle=False)
    out = dict(initial)
    out |= {f"{method}/var/{v.path}": keras.ops.convert_to_numpy(v.value) for v in trainer.weights}
    for name, values in history.history.items():
        out[f"{method}/log/{name}"] = np.asarray(values, np.float64)
    return out


def eval_images():
    """`EVAL_N` fixed images and the labels the `evaluate` model gives them."""
    x = np.random.default_rng(4).uniform(0.0, 1.0, (EVAL_N, 8, 8, 3)).astype("float32")
    return x, np.argmax(keras.ops.convert_to_numpy(_eval_model()(x, training=False)), axis=-1)


def _eval_model(dtype=None):
    keras.utils.set_random_seed(3)
    # Logits that vary with the image (small_cnn's barely do at initialisation), so the attacks flip some.
    conv = keras.layers.Conv2D(4, 3, activation="relu", dtype=dtype)
    layers = [conv, keras.layers.Flatten(dtype=dtype), keras.layers.Dense(10, dtype=dtype)]
    return keras.Sequential([keras.Input((8, 8, 3)), *layers])


def float64_eval_model():
    """The `evaluate` convnet in float64, with its float32 weights (the same labels, the same flips). Call
    `run_autoattack` on it under `float64_precision`: its decisions (gradient signs, loss comparisons)
    then agree to float64 rounding in every process, whatever its threads, and so do its float32 iterates,
    bit for bit (on a float32 model, sgemm's rounding depends on the thread count)."""
    weights = _eval_model("float32").get_weights()
    with float64_precision():
        model = _eval_model()
    model.set_weights(weights)
    return model


def evaluate(state_path=None):
    """AutoAttack (adversarial images, printed progress), `evaluate` (clean, PGD) and the perception
    analysis of a fixed convnet; `{name: array}`, with `printed` (what each rank printed) under torchrun."""
    model = float64_eval_model()
    x, y = eval_images()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), float64_precision():
        accuracy, x_adv = keras_rpat.autoattack.run_autoattack(
            model, x, y, "linf", EVAL_EPSILON, "custom", AA_ATTACKS, 4, state_path, verbose=True, options=AA_OPTIONS
        )
    out = {"eval/x_adv": x_adv, "eval/autoattack": np.float64(accuracy)} | evaluate_pgd()
    job = keras_rpat.backend.distributed_context()
    if job is not None:
        import torch.distributed as dist

        views = [None] * job.world_size
        dist.all_gather_object(views, printed.getvalue())
        out["printed"] = np.array(json.dumps(views))
    return out


@float64_precision()
def evaluate_pgd(strategy=None):
    """Clean and PGD accuracy (`evaluate`) and the perception analysis of the `evaluate` convnet
    (built in `strategy`'s scope, if given), in float64."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = _eval_model()
    x, y = eval_images()
    result = keras_rpat.evaluation.evaluate(
        model, x, y, ("clean", "pgd20"), epsilon=EVAL_EPSILON, num_steps=3, batch_size=8
    )
    perception = keras_rpat.evaluation.perception_analysis(model, x, y, "pgd20", EVAL_EPSILON, 1 / 255, 3, batch_size=8)
    out = {f"eval/{k}": np.float64(getattr(result, k)) for k in ("clean", "pgd20")}
    for k in ("n_success", "n_failure", "mse_success", "mse_failure", "mse_all", "clean_accuracy"):
        out[f"eval/perception_{k}"] = np.float64(getattr(perception, k))
    return out


@contextlib.contextmanager
def counted_replica_rows():
    """Records the rows each tf.distribute replica evaluates (`{replica: [rows per batch]}`)."""
    import tensorflow as tf

    from keras_rpat.backend import tensorflow_distributed

    seen, shard_scope = {}, tensorflow_distributed.shard_scope

    def counting(shard):
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            seen.setdefault(int(replica.replica_id_in_sync_group), []).append(int(tf.shape(shard.rows)[0]))
        return shard_scope(shard)

    tensorflow_distributed.shard_scope = counting
    try:
        yield seen
    finally:
        tensorflow_distributed.shard_scope = shard_scope


def tf_autoattack(state_path, resume=False):
    """AutoAttack of the `evaluate` convnet under tf.distribute (a PyTorch subprocess per replica):
    `{name: array}` with the adversarial images, the accuracy, what was printed and the state files in
    the folder (one writer); with `resume`, then again from its state file rewound to the end of the
    clean pass (an interruption there): that call's `(accuracy, x_adv is None)`."""
    x, y = eval_images()
    settings = dict(norm="linf", epsilon=EVAL_EPSILON, version="custom", attacks_to_run=AA_ATTACKS, batch_size=4)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), float64_precision():
        accuracy, x_adv = keras_rpat.autoattack.run_autoattack(
            float64_eval_model(), x, y, **settings, state_path=state_path, verbose=True, options=AA_OPTIONS
        )
    out = {"eval/x_adv": x_adv, "eval/autoattack": np.float64(accuracy), "eval/printed": np.array(printed.getvalue())}
    if state_path is not None:
        folder = os.path.dirname(state_path)
        out["eval/state_files"] = np.array(json.dumps(sorted(n for n in os.listdir(folder) if "aa_state" in n)))
    if resume:
        with open(state_path) as f:
            state = json.load(f)
        if state["clean_accuracy"] != 1.0:
            # The rewound state says every image is clean-correct, as the model's own labels make them.
            raise AssertionError(f"expected a clean accuracy of 1.0. Received: {state['clean_accuracy']}")
        state.update(robust=[True] * len(x), done=[], accuracy={"clean": 1.0}, current=None, complete=False)
        with open(state_path, "w") as f:
            json.dump(state, f)
        with float64_precision():
            again = keras_rpat.autoattack.run_autoattack(
                float64_eval_model(), x, y, **settings, state_path=state_path, options=AA_OPTIONS
            )
        out["eval/resumed"] = np.array(json.dumps([again[0], again[1] is None]))
    return out


def resumed_autoattack(state_path):
    """AutoAttack again after rank 1 lost its state file: every rank's `(accuracy, x_adv is None)`."""
    import torch.distributed as dist

    job = keras_rpat.backend.distributed_context()
    if job.rank == 1:
        os.remove(state_path)
    x, y = eval_images()
    with float64_precision():
        accuracy, x_adv = keras_rpat.autoattack.run_autoattack(
            float64_eval_model(), x, y, "linf", EVAL_EPSILON, "custom", AA_ATTACKS, 4, state_path, options=AA_OPTIONS
        )
    views = [None] * job.world_size
    dist.all_gather_object(views, [accuracy, x_adv is None])
    return {"resumed": np.array(json.dumps(views))}


def shared_folders(out):
    """Each rank's view of its folder after `share_folder` (rank 0's files: a resumed job's backup),
    and of rank 0's decisions (`from_primary`) and a configuration that differs (`check_same_on_all_ranks`)."""
    job = keras_rpat.backend.distributed_context()
    folder = f"{out}.folder{job.rank}"
    os.makedirs(folder)
    for name, text in (("weights", f"rank {job.rank}"), (f"only_on_{job.rank}", "")):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    keras_rpat.backend.share_folder(folder)
    seen = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            seen[name] = f.read()
    seen["from_primary"] = keras_rpat.backend.from_primary(f"decided on rank {job.rank}")
    try:
        keras_rpat.backend.check_same_on_all_ranks({"epochs": 10 + job.rank, "same": 1}, "configuration")
        seen["check_same"] = "passed"
    except ValueError as e:
        seen["check_same"] = str(e)
    views = keras_rpat.backend.all_gather_object(seen)
    return {"folders": np.array(json.dumps(views))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+", help="method[:path]")
    parser.add_argument("--no-sync-batchnorm", action="store_true")
    parser.add_argument("--strategy", choices=["mirrored", "multiworker"], help="tensorflow: a tf.distribute strategy")
    parser.add_argument("--cpus", type=int, default=1, help="tensorflow: logical CPU devices (for mirrored)")
    parser.add_argument("--aa-resume", action="store_true", help="tensorflow: AutoAttack resumed too")
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
        method, path = (run.split(":") + ["fast"])[:2]
        results.update(train(method, not args.no_sync_batchnorm, path == "fast", strategy))
    job = keras_rpat.backend.distributed_context()
    # What a run's results.json records of the job.
    provenance = keras_rpat.evaluation.provenance(batch_size=BATCH, sync_batchnorm=not args.no_sync_batchnorm)
    results["provenance"] = np.array(json.dumps(provenance))
    if strategy is None:  # torchrun (or one process)
        state_path = None if job is None else f"{args.out}.aa_state{job.rank}.json"  # a file per rank, as the CLI's
        results.update(evaluate(state_path))
        if job is not None:
            results.update(resumed_autoattack(state_path))
            results.update(shared_folders(args.out))
    else:
        if job.backend == "multiworker":
            results.update(shared_folders(args.out))
        # AutoAttack: a PyTorch subprocess per replica, the batches dealt to them.
        results.update(tf_autoattack(f"{args.out}.aa_state{job.rank}.json", resume=args.aa_resume))
        with counted_replica_rows() as rows:
            results.update(evaluate_pgd())  # under the process' strategy, as the CLI runs
            # A model built in the strategy's scope, evaluated outside it (the attack's random state is not mirrored).
            keras_rpat.backend.tensorflow_distributed.shutdown()
            results.update({f"{k}/outside_the_scope": v for k, v in evaluate_pgd(strategy).items()})
        results["eval/replica_rows"] = np.array(json.dumps(rows))
    if job is None or job.is_primary:
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
