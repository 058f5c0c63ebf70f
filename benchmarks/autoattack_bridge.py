"""AutoAttack (pyautoattack through `TorchBridge`) on the Keras model vs the lowered model (torch).

The same `run_autoattack` call with the fast path off (the bridge calls the
Keras model) and on (it calls the model lowered by `keras_rpat.fast_path`),
in interleaved rounds; the best time of each is printed, with whether the
robust accuracies and adversarial images agree.

    KERAS_BACKEND=torch python benchmarks/autoattack_bridge.py                 # ResNet-18, 16 CIFAR-sized images
    KERAS_BACKEND=torch python benchmarks/autoattack_bridge.py --rounds 5 --n-iter 20
"""

import argparse
import time

import keras_rpat

import keras
import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-iter", type=int, default=10, help="APGD iterations")
    p.add_argument("--attacks", default="apgd-ce,apgd-t")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if keras.config.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch: the bridge is the torch backend's")
    keras_rpat.backend.set_random_seed(0)
    model = keras_rpat.models.get(args.arch, num_classes=10, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).uniform(size=(args.images, args.size, args.size, 3)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)  # every image is attacked
    attacks = args.attacks.split(",")
    options = {"apgd": {"n_iter": args.n_iter}, "apgd-t": {"n_iter": args.n_iter, "n_target_classes": 3}}

    def run(lowered):
        keras_rpat.config.set_fast_path_default(lowered)
        start = time.perf_counter()
        acc, x_adv = keras_rpat.autoattack.run_autoattack(
            model, x, y, version="custom", attacks_to_run=attacks, batch_size=args.images, options=options
        )
        return time.perf_counter() - start, acc, x_adv

    run(True)  # warm-up: lowering, relayout, first-call allocations
    times = {"keras": [], "lowered": []}
    results = {}
    for _ in range(args.rounds):
        for name, lowered in (("keras", False), ("lowered", True)):
            seconds, acc, x_adv = run(lowered)
            times[name].append(seconds)
            results[name] = (acc, x_adv)
    keras_rpat.config.set_fast_path_default(True)
    best = {name: min(t) for name, t in times.items()}
    print(f"{args.arch}, {args.images} images {args.size}x{args.size}, {attacks}, n_iter {args.n_iter}, "
          f"{args.rounds} interleaved rounds, best time:")  # fmt: skip
    for name, t in times.items():
        print(f"  {name:8s} {best[name]:7.2f} s   (all: {', '.join(f'{s:.2f}' for s in t)})")
    print(f"  speed-up {best['keras'] / best['lowered']:.2f}x")
    (acc_k, adv_k), (acc_l, adv_l) = results["keras"], results["lowered"]
    print(f"  robust accuracy: keras {acc_k:.2f}%, lowered {acc_l:.2f}%; "
          f"adversarial images equal: {np.array_equal(adv_k, adv_l)} (max diff {np.abs(adv_k - adv_l).max():.2e})")  # fmt: skip


if __name__ == "__main__":
    main()
