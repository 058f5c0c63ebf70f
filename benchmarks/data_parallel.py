"""Data-parallel throughput: images/s of the PGD-AT + RPAT step on 1, 2, ... ranks or replicas.

`--backend torch` (default): each rank count runs as its own `torchrun
--nproc_per_node=N` job (gloo on CPU, nccl on CUDA, one device per rank). One
step is PGD-K on the rank's rows, the three train-mode forwards of PGD-AT +
RPAT, the backward, one all-reduce of the gradients and the SGD update
(keras_rpat.backend.torch_distributed).

`--backend tensorflow`: each replica count runs in a process of its own under
`tf.distribute.MirroredStrategy` over N devices: the first N GPUs, or on a host
without GPUs N logical CPU devices (configured before TensorFlow initialises;
intra-op threads `--threads` x N). The step is the same, `trainer.fit`'s
(keras_rpat.backend.tensorflow_distributed): Keras runs it once per replica and
the optimiser sums the gradients. One replica is plain one-device training.

The table reports images/s of the global batch, the scaling efficiency
`ips(N) / (N * ips(1))` and the cost of one all-reduce of a tensor the size of
the gradients, alone (gloo / nccl on torch; the strategy's all-reduce on
tensorflow: ReductionToOneDevice between CPU devices, NCCL between GPUs).

    python benchmarks/data_parallel.py --smoke                    # CPU, small CNN on 8x8 images
    python benchmarks/data_parallel.py --cpu                      # CPU, ResNet-18 on 32x32, batch 32 per rank
    python benchmarks/data_parallel.py --ranks 1,2,4,8 --arch resnet18 --batch 128 --steps 10   # GPUs
    python benchmarks/data_parallel.py --backend tensorflow --smoke   # the same on tensorflow
    python benchmarks/data_parallel.py --backend tensorflow --cpu     # 2 logical CPU devices
    python benchmarks/data_parallel.py --backend tensorflow --ranks 1,2,4,8 --arch resnet18 --batch 128 \
        --pgd-steps 10 --steps 20                                     # GPUs, MirroredStrategy

`--scaling weak` (default) keeps the per-rank batch (the global batch grows
with N, as multi-GPU runs usually do); `--scaling strong` keeps the global
batch and splits it. Writes benchmarks/data_parallel.json (or --out; the
tensorflow runs default to benchmarks/data_parallel_tensorflow.json).

`--autoattack N` (torch only) times AutoAttack instead: N images (labelled
with the model's own predictions, so every attack runs on all of them) in
batches of `--aa-batch`, dealt to the ranks; it reports seconds, images/s and
the robust accuracy, which must not depend on the rank count.

    python benchmarks/data_parallel.py --smoke --autoattack 64 --aa-batch 8
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("torch", "tensorflow"), default="torch")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank (torch) or replica (tensorflow) counts")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--batch", type=int, default=128, help="per-rank batch (weak) or global batch (strong)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--scaling", choices=("weak", "strong"), default="weak")
    p.add_argument("--sync-batchnorm", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per rank or replica (1: no oversubscription on a shared CPU)",
    )
    p.add_argument("--smoke", action="store_true", help="small_cnn, 8x8, batch 8, PGD-2, 3 steps")
    p.add_argument("--cpu", action="store_true", help="ResNet-18, 32x32, batch 32, PGD-3, 3 steps")
    p.add_argument("--autoattack", type=int, default=0, metavar="N", help="time AutoAttack on N images instead")
    p.add_argument("--aa-batch", type=int, default=250, help="AutoAttack batch size")
    p.add_argument("--aa-attacks", default="apgd-ce,apgd-t", help="AutoAttack attacks (custom version)")
    p.add_argument("--aa-iters", type=int, default=10, help="APGD iterations")
    p.add_argument("--out", default=None, help="the JSON report (default: benchmarks/data_parallel[_tensorflow].json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--replicas", type=int, default=1, help=argparse.SUPPRESS)  # a tensorflow worker's
    args = p.parse_args(argv)
    if args.out is None:
        name = "data_parallel.json" if args.backend == "torch" else "data_parallel_tensorflow.json"
        args.out = os.path.join(os.path.dirname(HERE), name)
    if args.autoattack and args.backend != "torch":
        p.error(
            "--autoattack times torchrun's sharded AutoAttack; on tensorflow the evaluation runs on the first "
            "device of each worker (docs/guides/multi-device.md). Drop --autoattack or use --backend torch."
        )
    if args.smoke:
        args.arch, args.size, args.batch, args.pgd_steps, args.steps, args.warmup = "small_cnn", 8, 8, 2, 3, 1
    elif args.cpu:
        args.arch, args.size, args.batch, args.pgd_steps, args.steps, args.warmup = "resnet18", 32, 32, 3, 3, 1
    return args


def _trainer(args):
    """The PGD-AT + RPAT trainer of the benchmark (PGD-`args.pgd_steps`), compiled."""
    import keras_rpat

    preset = keras_rpat.presets.get("pgd_at+rpat")
    attack = preset.attack.__class__.from_config({**preset.attack.get_config(), "num_steps": args.pgd_steps})
    model = keras_rpat.models.get(args.arch, num_classes=10, input_shape=(args.size, args.size, 3))
    trainer = preset.build_trainer(model, attack=attack, sync_batchnorm=args.sync_batchnorm)
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-4))
    return trainer


def _batch(args, world):
    """The synthetic global batch `(x, y)` of a job of `world` ranks or replicas."""
    import numpy as np

    batch = args.batch * world if args.scaling == "weak" else args.batch
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, args.size, args.size, 3)).astype("float32")
    return x, rng.integers(0, 10, batch)


def _gradient_size(trainer):
    return sum(int(math.prod(v.shape)) for v in trainer.trainable_weights)


def _write_record(args, world, batch, step_s, allreduce_ms):
    import keras_rpat

    record = {
        "backend": args.backend,
        "ranks": world,
        "global_batch": batch,
        "step_s": step_s,
        "images_per_s": batch / step_s,
        "allreduce_ms": allreduce_ms,
        "device": keras_rpat.backend.device_name(),
    }
    with open(args.worker, "w") as f:
        json.dump(record, f)


def worker(args):
    """One rank (torch) or the process of all replicas (tensorflow): times `args.steps` steps;
    rank 0 writes its figures to `args.worker`."""
    if args.backend == "tensorflow":
        return tensorflow_worker(args)
    import keras_rpat

    keras_rpat.backend.set_random_seed(0)
    if args.autoattack:
        return autoattack_worker(args)
    return torch_worker(args)


def torch_worker(args):
    import torch
    import torch.distributed as dist

    trainer = _trainer(args)
    job = trainer.join_distributed()
    world = 1 if job is None else job.world_size
    x, y = _batch(args, world)
    cuda = torch.cuda.is_available()

    def sync():
        if cuda:
            torch.cuda.synchronize()
        if job is not None:
            dist.barrier()

    for _ in range(args.warmup):
        trainer.train_on_batch(x, y)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_on_batch(x, y)
    sync()
    step_s = (time.perf_counter() - start) / args.steps

    allreduce_ms = 0.0
    if job is not None:  # the gradient bucket alone
        bucket = torch.zeros(_gradient_size(trainer), device="cuda" if cuda else "cpu")
        dist.all_reduce(bucket)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            dist.all_reduce(bucket)
        sync()
        allreduce_ms = 1000 * (time.perf_counter() - start) / args.steps
    if job is None or job.is_primary:
        _write_record(args, world, len(x), step_s, allreduce_ms)


def tensorflow_worker(args):
    """`args.replicas` replicas under MirroredStrategy (one: no strategy), in this process."""
    import tensorflow as tf

    replicas = args.replicas
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:  # before TensorFlow initialises its devices
        tf.config.threading.set_intra_op_parallelism_threads(args.threads * replicas)
        tf.config.threading.set_inter_op_parallelism_threads(replicas)
        if replicas > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import keras

    keras.utils.set_random_seed(0)
    strategy = None
    if replicas > 1:
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        if len(devices) < replicas:
            sys.exit(f"{replicas} replicas need {replicas} devices; this host has {len(devices)}: {devices}")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:replicas]])
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        trainer = _trainer(args)
    x, y = _batch(args, replicas)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)).repeat()

    # `fit` traces the step (and checks the batch); the timed steps are fit's own `train_function`
    # on one distributed iterator: a `fit` call under a strategy costs ~0.3 s of set-up on this CPU.
    trainer.fit(data, steps_per_epoch=max(args.warmup, 1), epochs=1, verbose=0)
    iterator = iter(trainer.distribute_strategy.experimental_distribute_dataset(data))
    for _ in range(args.warmup):
        trainer.train_function(iterator)
    keras.ops.convert_to_numpy(trainer.trainable_weights[0])
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_function(iterator)
    keras.ops.convert_to_numpy(trainer.trainable_weights[0])  # waits for the last update
    step_s = (time.perf_counter() - start) / args.steps

    allreduce_ms = 0.0
    if strategy is not None:  # a gradient-sized tensor alone, summed over the replicas by the strategy
        numel = _gradient_size(trainer)

        def one_allreduce():
            bucket = tf.fill([numel], 1.0)
            summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bucket)
            return summed[:1]

        @tf.function
        def allreduce():
            return strategy.experimental_local_results(strategy.run(one_allreduce))[0]

        allreduce().numpy()
        start = time.perf_counter()
        for _ in range(args.steps):
            allreduce().numpy()
        allreduce_ms = 1000 * (time.perf_counter() - start) / args.steps
    _write_record(args, replicas, len(x), step_s, allreduce_ms)


def autoattack_worker(args):
    """One rank of a sharded AutoAttack evaluation; rank 0 writes seconds, images/s and the accuracy."""
    import keras
    import numpy as np
    import torch.distributed as dist

    import keras_rpat

    job = keras_rpat.backend.initialize_distributed()
    model = keras_rpat.models.get(args.arch, num_classes=10, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).uniform(0, 1, (args.autoattack, args.size, args.size, 3)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(model.predict(x, batch_size=args.aa_batch, verbose=0)), axis=-1)
    attacks = args.aa_attacks.split(",")
    options = {"apgd": {"n_iter": args.aa_iters}, "apgd-t": {"n_iter": args.aa_iters, "n_target_classes": 3}}
    if job is not None:
        dist.barrier()
    start = time.perf_counter()
    accuracy, _ = keras_rpat.autoattack.run_autoattack(
        model,
        x,
        y,
        version="custom",
        attacks_to_run=attacks,
        options=options,
        batch_size=args.aa_batch,
        return_adversarial=False,
    )
    seconds = time.perf_counter() - start
    if job is None or job.is_primary:
        record = {
            "ranks": 1 if job is None else job.world_size,
            "images": args.autoattack,
            "aa_batch": args.aa_batch,
            "attacks": attacks,
            "seconds": seconds,
            "images_per_s": args.autoattack / seconds,
            "robust_accuracy": accuracy,
            "device": keras_rpat.backend.device_name(),
        }
        with open(args.worker, "w") as f:
            json.dump(record, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _passed(args):
    """The benchmark's options, for the worker processes."""
    passed = [f"--backend={args.backend}", f"--arch={args.arch}", f"--size={args.size}", f"--batch={args.batch}"]
    passed += [f"--scaling={args.scaling}", f"--pgd-steps={args.pgd_steps}", f"--steps={args.steps}"]
    passed += [f"--warmup={args.warmup}", f"--threads={args.threads}"]
    passed += ["--sync-batchnorm"] if args.sync_batchnorm else []
    if args.autoattack:
        passed += [f"--autoattack={args.autoattack}", f"--aa-batch={args.aa_batch}"]
        passed += [f"--aa-attacks={args.aa_attacks}", f"--aa-iters={args.aa_iters}"]
    return passed


def run_job(args, ranks, folder):
    """One job of `ranks` ranks (a torchrun job) or replicas (a tensorflow process); its record."""
    out = os.path.join(folder, f"ranks{ranks}.json")
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    if args.backend == "torch":
        env["OMP_NUM_THREADS"] = str(args.threads)
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
        command += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}", HERE]
    else:
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, HERE, f"--replicas={ranks}"]
    done = subprocess.run([*command, *_passed(args), "--worker", out], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    ranks = [int(r) for r in args.ranks.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        records = [run_job(args, n, folder) for n in ranks]
    base = next((r for r in records if r["ranks"] == 1), None)
    report = {
        "backend": args.backend,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "results": records,
    }
    if args.autoattack:
        return report_autoattack(args, records, base, report)
    for r in records:
        r["scaling_efficiency"] = None if base is None else r["images_per_s"] / (r["ranks"] * base["images_per_s"])
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    what = "torchrun ranks" if args.backend == "torch" else "MirroredStrategy replicas"
    print(
        f"{args.backend} ({what}): {args.arch} {args.size}x{args.size}, PGD-{args.pgd_steps}, "
        f"{args.scaling} scaling, {records[0]['device']}"
    )
    print(f"{'ranks':>5} {'global batch':>12} {'images/s':>10} {'efficiency':>10} {'all-reduce ms':>13}")
    for r in records:
        eff = "-" if r["scaling_efficiency"] is None else f"{r['scaling_efficiency']:.2f}"
        print(
            f"{r['ranks']:>5} {r['global_batch']:>12} {r['images_per_s']:>10.1f} {eff:>10} {r['allreduce_ms']:>13.2f}"
        )
    print(f"Wrote {args.out}")


def report_autoattack(args, records, base, report):
    for r in records:
        r["speedup"] = None if base is None else base["seconds"] / r["seconds"]
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(
        f"AutoAttack ({args.aa_attacks}, APGD {args.aa_iters} iterations) on {args.autoattack} images, "
        f"batch {args.aa_batch}, {args.arch} {args.size}x{args.size}, {records[0]['device']}"
    )
    print(f"{'ranks':>5} {'seconds':>9} {'images/s':>9} {'speed-up':>8} {'robust acc %':>12}")
    for r in records:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}"
        print(
            f"{r['ranks']:>5} {r['seconds']:>9.2f} {r['images_per_s']:>9.1f} {speedup:>8} {r['robust_accuracy']:>12.2f}"
        )
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
