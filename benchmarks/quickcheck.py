"""The 5-epoch real-data quick check of PERFORMANCE.md, with RPATTrainer.

PGD-AT + RPAT (lambda 1, alpha 0.5), standard ResNet-18, batch 128, SGD
0.1/0.9/5e-4, LR 0.1, 0.1, 0.1, 0.01, 0.001 per epoch, crop + flip; after every
epoch clean accuracy on the whole test set and PGD-20 accuracy on 2,000 evenly
strided test images. The anchor (plain PyTorch, bf16 autocast, channels_last):

    epoch 1: 31.37 / 22.65    epoch 3: 42.99 / 28.40    epoch 5: 49.03 / 31.95

A faithful implementation should land within about 2 points at epoch 5.

    python benchmarks/quickcheck.py --data cifar10.npz     # keras.datasets layout
    python benchmarks/quickcheck.py --smoke                # synthetic data, CPU, ~1 min

The shared CIFAR-10 JPEG copy is decoded with its own script
(`decode_cifar10_jpeg.py IN.npz OUT.npz`); never commit the data.
"""

import argparse
import json
import os
import time

ANCHOR = {1: (31.37, 22.65), 3: (42.99, 28.40), 5: (49.03, 31.95)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help=".npz in the keras.datasets layout (default: synthetic)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-pgd", type=int, default=2000, help="test images for PGD-20")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="synthetic data, small CNN, 2 epochs")
    p.add_argument("--capture", action="store_true", help="torch fast path: capture the step in a CUDA graph")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--memory-format", default="contiguous", choices=["contiguous", "channels_last"])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickcheck.json"))
    args = p.parse_args(argv)

    import keras_rpat
    import keras

    from keras_rpat import attacks, datasets, evaluation, losses, models, optimizers

    keras_rpat.backend.set_random_seed(args.seed)
    if args.smoke:
        data = datasets.load("synthetic", n_train=256, n_test=128, image_size=16, contrast=0.3)
        args.epochs, args.n_pgd, arch_kwargs = 2, 64, {"widths": (8, 16, 16)}
        arch = "small_cnn"
    else:
        data = datasets.load(args.data) if args.data else datasets.load("synthetic")
        arch, arch_kwargs = args.arch, {}
    classifier = models.get(arch, num_classes=data.num_classes, input_shape=data.image_shape, **arch_kwargs)
    trainer = keras_rpat.RPATTrainer(
        classifier,
        attack=attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=10),
        losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception(alpha=0.5, weight=1.0)],
        capture=args.capture,
        precision=args.precision,
        memory_format=args.memory_format,
    )
    train, _ = datasets.make_datasets(data, batch_size=args.batch_size, pipeline="bench", seed=args.seed)
    # LR 0.1 for epochs 1-3, 0.01 for epoch 4, 0.001 for epoch 5 (scaled for other lengths).
    milestones = optimizers.scale_milestones([3, 4], args.epochs, 5)
    schedule = optimizers.MultiStepDecay(0.1, milestones, steps_per_epoch=len(train))
    trainer.compile(optimizer=optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4))

    x_test = data.x_test.astype("float32") / 255.0 if data.x_test.dtype.name == "uint8" else data.x_test
    y_test = data.y_test
    stride = max(1, len(x_test) // args.n_pgd)
    x_pgd, y_pgd = x_test[::stride][: args.n_pgd], y_test[::stride][: args.n_pgd]
    rows = []

    class PerEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clean = evaluation.clean_accuracy(classifier, x_test, y_test)
            pgd = evaluation.pgd_accuracy(
                classifier, x_pgd, y_pgd, "linf", 8 / 255, 2 / 255, num_steps=20, seed=args.seed
            )
            rows.append({"epoch": epoch + 1, "clean": clean, "pgd20": pgd, "time": time.time()})
            print(f"epoch {epoch + 1}: clean {clean:.2f}, PGD-20 {pgd:.2f} (n={len(x_pgd)})", flush=True)

    start = time.time()
    trainer.fit(train, epochs=args.epochs, verbose=2, callbacks=[PerEpoch()])
    record = {
        "backend": keras.config.backend(),
        "device": keras_rpat.backend.device_name(),
        "data": args.data or "synthetic",
        "arch": arch,
        "seconds": time.time() - start,
        "rows": rows,
        "anchor": {str(k): v for k, v in ANCHOR.items()},
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, args.out)
    print(f"\n{'epoch':>5} {'clean':>7} {'PGD-20':>7} {'anchor clean':>13} {'anchor PGD-20':>14}")
    for r in rows:
        a = ANCHOR.get(r["epoch"], (float("nan"), float("nan")))
        print(f"{r['epoch']:>5} {r['clean']:>7.2f} {r['pgd20']:>7.2f} {a[0]:>13.2f} {a[1]:>14.2f}")
    print(f"wrote {args.out} ({record['seconds']:.0f} s, {record['backend']} on {record['device']})")


if __name__ == "__main__":
    main()
