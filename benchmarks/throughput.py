"""Training-step throughput: RPATTrainer vs the authors' plain-PyTorch step.

One step = PGD-10 (L-inf 8/255, step 2/255, eval-mode BatchNorm, uniform start)
plus the three train-mode forwards of PGD-AT + RPAT, backward and an SGD update,
at batch 128 on CIFAR shapes (PERFORMANCE.md). Speed is reported as images per
second and as the RATIO to the plain-PyTorch eager fp32 step timed in the same
process on the same device, for the torch backend and (in a second process) the
tensorflow backend.

    python benchmarks/throughput.py                       # all models, both backends
    python benchmarks/throughput.py --models resnet18 --backends torch
    python benchmarks/throughput.py --smoke               # CPU, well under a minute

Writes benchmarks/throughput.json (or --out) and prints a table last.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("resnet18", "resnet18_bottleneck", "preact_resnet18", "wide_resnet34_10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--backends", default="torch,tensorflow")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=10, help="PGD steps per training step")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: resnet18, batch 4, 8x8, PGD-2, 2 steps")
    p.add_argument("--out", default=os.path.join(HERE, "throughput.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch_size, args.image_size = "resnet18", 4, 8
        args.num_steps, args.steps, args.warmup = 2, 2, 1
    return args


# ---------------------------------------------------------------------------
# Worker: one backend, one process
# ---------------------------------------------------------------------------
def _peak_memory_mb(torch):
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, steps, warmup, sync):
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - start


def worker(args):
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import torch_reference

    import keras_rpat
    import keras

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    b, s = args.batch_size, args.image_size
    x = rng.uniform(size=(b, s, s, 3)).astype("float32")
    y = rng.integers(0, 10, size=(b,)).astype("int64")
    results = []
    for name in args.models.split(","):
        row = {"model": name, "backend": keras.config.backend(), "batch_size": b}
        # Plain PyTorch reference, same process, same device.
        ref = torch_reference.build(name).to(device)
        step = torch_reference.make_reference_step(ref, num_steps=args.num_steps)
        xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().to(device)
        yt = torch.tensor(y).to(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = _time(lambda: step(xt, yt), args.steps, args.warmup, sync)
        row["reference_images_per_s"] = b * args.steps / seconds
        row["reference_peak_mb"] = _peak_memory_mb(torch)
        del ref, step
        # RPATTrainer.
        keras.utils.set_random_seed(0)
        classifier = keras_rpat.models.get(name, num_classes=10, input_shape=(s, s, 3))
        trainer = keras_rpat.RPATTrainer(
            classifier,
            attack=keras_rpat.attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=args.num_steps),
            losses=[keras_rpat.losses.AdversarialCrossEntropy(), keras_rpat.losses.RobustPerception()],
            track_clean_accuracy=False,
        )
        trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = _time(lambda: trainer.train_on_batch(x, y), args.steps, args.warmup, sync)
        row["keras_images_per_s"] = b * args.steps / seconds
        row["keras_peak_mb"] = _peak_memory_mb(torch)
        row["jit_compile"] = bool(trainer.jit_compile)
        row["ratio"] = row["keras_images_per_s"] / row["reference_images_per_s"]
        row["device"] = keras_rpat.backend.device_name()
        results.append(row)
        del trainer, classifier
    with open(args.worker, "w") as f:
        json.dump(results, f)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    rows = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", out] + [
                a for a in (argv if argv is not None else sys.argv[1:]) if a != "--worker"
            ]
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            proc = subprocess.run(cmd, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{backend} worker failed with exit code {proc.returncode}")
            with open(out) as f:
                rows.extend(json.load(f))
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "rows": rows,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, args.out)
    print(f"\nPGD-{args.num_steps} + RPAT step, batch {args.batch_size}, {args.image_size}x{args.image_size} (wrote {args.out})")
    print(f"{'backend':<11} {'model':<20} {'device':<14} {'ref img/s':>10} {'keras img/s':>12} {'ratio':>6} {'peak MB':>8}")
    for r in rows:
        print(
            f"{r['backend']:<11} {r['model']:<20} {r['device'][:14]:<14} {r['reference_images_per_s']:>10.1f} "
            f"{r['keras_images_per_s']:>12.1f} {r['ratio']:>6.2f} {r['keras_peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
