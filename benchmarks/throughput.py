"""Training-step and forward throughput: RPATTrainer vs the authors' plain-PyTorch step.

One step = PGD-K (L-inf 8/255, step 2/255, eval-mode BatchNorm, uniform start)
plus the three train-mode forwards of PGD-AT + RPAT, backward and an SGD update
(PERFORMANCE.md). Every configuration is timed in the same process as the
plain-PyTorch eager fp32 step on the same device, in interleaved rounds (best
round kept), and reported as images/s and as the RATIO to that step:

    torch worker       plain_pytorch (the reference), keras_fast (the torch fast
                       path, default), keras_eager (fast_path=False); on CUDA also
                       keras_fast_capture, keras_fast_bf16, keras_fast_capture_bf16,
                       keras_fast_channels_last
    tensorflow worker  tf_function, tf_xla (jit_compile=True)
    jax worker         jax_jit (Keras' JAX trainer: the whole step one jax.jit
                       program), jax_eager (compile(jit_compile=False): the
                       same step dispatched op by op from Python; the
                       attack's loop runs step by step)

A forward-only ratio (one inference forward, no gradient, as evaluation runs
it) is measured the same way. The first call of each configuration (tracing,
compiling, lowering) is timed on its own (`first_step_s`, `first_forward_s`)
and is not part of the steady-state times; on jax, the seconds of XLA
compilation that fall inside the timed steps are reported too.

    python benchmarks/throughput.py --smoke                  # CPU, about a minute
    python benchmarks/throughput.py --cpu                    # the CPU acceptance shapes
    python benchmarks/throughput.py --models resnet18 --backends torch --shapes 128x32x10
    python benchmarks/throughput.py --smoke --backends torch,tensorflow,jax

A shape is BATCHxSIZExPGD_STEPS. Writes benchmarks/throughput.json (or --out)
and prints a table last.
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
MODELS = ("resnet18", "resnet18_bottleneck", "preact_resnet18", "wide_resnet16_4")  # also small_cnn
TORCH_CONFIGS = ("plain_pytorch", "keras_fast", "keras_eager")
CUDA_CONFIGS = ("keras_fast_capture", "keras_fast_bf16", "keras_fast_capture_bf16", "keras_fast_channels_last")
TF_CONFIGS = ("plain_pytorch", "tf_function", "tf_xla")
JAX_CONFIGS = ("plain_pytorch", "jax_jit", "jax_eager")
CPU_SHAPES = "4x8x2,8x16x3,32x32x10"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--backends", default="torch,tensorflow", help="comma list of torch, tensorflow, jax")
    p.add_argument("--shapes", default="128x32x10", help="comma list of BATCHxSIZExPGD_STEPS")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="calls before the timed rounds (at least the first, timed apart: it compiles)",
    )
    p.add_argument("--configs", default=None, help="comma list (default: all for the device)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of every backend's kernels (default: each backend's own); 1 on a crowded CPU",
    )
    p.add_argument("--smoke", action="store_true", help="resnet18, batch 4, 8x8, PGD-2, 2 steps, 2 rounds")
    p.add_argument("--cpu", action="store_true", help=f"the CPU acceptance shapes {CPU_SHAPES}")
    p.add_argument("--out", default=os.path.join(HERE, "throughput.json"))
    p.add_argument(
        "--check-jax-gpu", action="store_true", help="only say whether JAX sees a GPU (exit status 0) or why not (1)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    presets, _ = p.parse_known_args(argv)  # --smoke and --cpu change the defaults; options given still win
    if presets.smoke:
        p.set_defaults(models="resnet18", shapes="4x8x2", steps=2, rounds=2, warmup=1)
    if presets.cpu:
        p.set_defaults(shapes=CPU_SHAPES)
    args = p.parse_args(argv)
    args.shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    for shape in args.shapes:
        if len(shape) != 3 or min(shape) < 0 or shape[0] < 1:
            raise SystemExit(f"--shapes: expected BATCHxSIZExPGD_STEPS such as 128x32x10, got {shape}")
    for backend in args.backends.split(","):
        if backend not in ("torch", "tensorflow", "jax"):
            raise SystemExit(f"--backends: expected a comma list of torch, tensorflow, jax, got {backend!r}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads: expected a positive number of threads, got {args.threads}")
    known = set(TORCH_CONFIGS + CUDA_CONFIGS + TF_CONFIGS + JAX_CONFIGS)
    for config in args.configs.split(",") if args.configs else ():
        if config not in known:
            raise SystemExit(f"--configs: unknown configuration {config!r}; known: {', '.join(sorted(known))}")
    return args


# ---------------------------------------------------------------------------
# Worker: one backend, one process
# ---------------------------------------------------------------------------
def build_keras_model(name, size):
    import keras_rpat

    if name.startswith("wide_resnet") and name not in ("wide_resnet34_10", "wide_resnet28_10"):
        depth, widen = (int(v) for v in name[len("wide_resnet") :].split("_"))
        return keras_rpat.models.wide_resnet(
            depth=depth, widen_factor=widen, num_classes=10, input_shape=(size, size, 3)
        )
    return keras_rpat.models.get(name, num_classes=10, input_shape=(size, size, 3))


def build_reference(name):
    sys.path.insert(0, HERE)
    import torch_reference

    if name.startswith("wide_resnet") and name not in ("wide_resnet34_10", "wide_resnet28_10"):
        depth, widen = (int(v) for v in name[len("wide_resnet") :].split("_"))
        return torch_reference.TorchWideResNet(depth, widen, 10)
    return torch_reference.build(name)


def _configs(args, backend, cuda):
    if args.configs:
        return args.configs.split(",")
    if backend == "torch":
        return list(TORCH_CONFIGS) + (list(CUDA_CONFIGS) if cuda else [])
    return list(JAX_CONFIGS if backend == "jax" else TF_CONFIGS)


def _make(config, name, args, shape, x, y, device):
    """Returns (step_fn, forward_fn) for one configuration."""
    import keras
    import torch

    import keras_rpat

    batch, size, num_steps = shape
    if config == "plain_pytorch":
        sys.path.insert(0, HERE)
        import torch_reference

        ref = build_reference(name).to(device)
        step = torch_reference.make_reference_step(ref, num_steps=num_steps)
        xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().to(device)
        yt = torch.tensor(y).to(device)

        def forward():
            ref.eval()
            with torch.no_grad():
                return ref(xt)

        return (lambda: step(xt, yt)), forward
    keras_rpat.backend.set_random_seed(0)
    classifier = build_keras_model(name, size)
    options = {}
    if config.startswith("keras_"):
        options["fast_path"] = config != "keras_eager"
        options["capture"] = "capture" in config
        options["precision"] = "bfloat16" if "bf16" in config else "float32"
        options["memory_format"] = "channels_last" if "channels_last" in config else "contiguous"
    trainer = keras_rpat.RPATTrainer(
        classifier,
        attack=keras_rpat.attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=num_steps),
        losses=[keras_rpat.losses.AdversarialCrossEntropy(), keras_rpat.losses.RobustPerception()],
        track_clean_accuracy=False,
        **options,
    )
    trainer.compile(
        optimizer=keras_rpat.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4),
        jit_compile=config in ("tf_xla", "jax_jit"),
    )
    xk = keras.ops.convert_to_tensor(x)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        infer = tf.function(lambda t: classifier(t, training=False), jit_compile=config == "tf_xla")
        return (lambda: trainer.train_on_batch(x, y)), (lambda: infer(xk))
    if keras.config.backend() == "jax":
        # train_on_batch returns the logs as Python floats: it waits for the step. The forward is
        # what Keras' predict runs (jitted stateless_call) or, un-jitted, the model called op by op.
        import jax

        if config == "jax_jit":
            infer = jax.jit(lambda tv, ntv, t: classifier.stateless_call(tv, ntv, t, training=False)[0])

            def forward():
                trainable = [v.value for v in classifier.trainable_variables]
                non_trainable = [v.value for v in classifier.non_trainable_variables]
                return jax.block_until_ready(infer(trainable, non_trainable, xk))

        else:

            def forward():
                return jax.block_until_ready(classifier(xk, training=False))

        return (lambda: trainer.train_on_batch(x, y)), forward
    forward_model = trainer._classifier_forward()

    def forward():
        with torch.no_grad():
            return forward_model(xk, training=False)

    return (lambda: trainer.train_on_batch(x, y)), forward


def _peak(torch, config):
    """(peak MB, what it measures): torch's CUDA allocator, JAX's device allocator (cumulative over
    the process: JAX has no reset) or, on a CPU, the process's peak RSS (cumulative too)."""
    if config.startswith("jax_"):
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20, "jax_device_peak"
    elif torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_rss"


class _JaxCompileClock:
    """Seconds JAX spent compiling XLA programs since it was made (0.0 off jax)."""

    def __init__(self, backend):
        self.seconds = 0.0
        if backend == "jax":
            import jax

            def listen(event, duration, **kwargs):
                if event == "/jax/core/compile/backend_compile_duration":
                    self.seconds += duration

            jax.monitoring.register_event_duration_secs_listener(listen)


def _timed_call(fn, sync):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _best_time(fn, calls, sync):
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def worker(args):
    import keras
    import numpy as np
    import torch

    import keras_rpat

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch_device = f"cuda:0 ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
    backend = keras.config.backend()
    keras_device = keras_rpat.backend.device_name()
    if backend == "jax" and cuda != keras_device.startswith("gpu"):
        print(f"warning: plain PyTorch runs on {torch_device} but JAX on {keras_device}: the ratios compare devices")
    compile_clock = _JaxCompileClock(backend)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rows = []
    for shape in args.shapes:
        batch, size, num_steps = shape
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(batch, size, size, 3)).astype("float32")
        y = rng.integers(0, 10, size=(batch,)).astype("int64")
        for name in args.models.split(","):
            configs = _configs(args, backend, cuda)
            built, peaks, first = {}, {}, {}
            for config in configs:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                step, forward = _make(config, name, args, shape, x, y, device)
                first[config] = (_timed_call(step, sync), _timed_call(forward, sync))
                for _ in range(args.warmup - 1):
                    step()
                    forward()
                sync()
                peaks[config] = _peak(torch, config)
                built[config] = (step, forward)
            best_step = {c: float("inf") for c in configs}
            best_fwd = dict(best_step)
            timed_compile = dict.fromkeys(configs, 0.0)
            for _ in range(args.rounds):  # interleaved: drift hits every config alike
                for config in configs:
                    step, forward = built[config]
                    compiled = compile_clock.seconds
                    best_step[config] = min(best_step[config], _best_time(step, args.steps, sync))
                    timed_compile[config] += compile_clock.seconds - compiled
                    best_fwd[config] = min(best_fwd[config], _best_time(forward, max(args.steps, 3), sync))
            ref_step, ref_fwd = best_step["plain_pytorch"], best_fwd["plain_pytorch"]
            for config in configs:
                rows.append(
                    {
                        "backend": backend,
                        "model": name,
                        "batch_size": batch,
                        "image_size": size,
                        "pgd_steps": num_steps,
                        "config": config,
                        "step_images_per_s": batch / best_step[config],
                        "step_ratio": ref_step / best_step[config],
                        "forward_images_per_s": batch / best_fwd[config],
                        "forward_ratio": ref_fwd / best_fwd[config],
                        "first_step_s": first[config][0],
                        "first_forward_s": first[config][1],
                        # XLA compilation inside the timed steps, per step (jax only; 0 once compiled).
                        "timed_compile_s_per_step": (
                            timed_compile[config] / (args.rounds * args.steps) if backend == "jax" else None
                        ),
                        "peak_mb": peaks[config][0],
                        "peak_kind": peaks[config][1],
                        "device": torch_device if config == "plain_pytorch" else keras_device,
                    }
                )
            del built
    with open(args.worker, "w") as f:
        json.dump(rows, f)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def jax_gpu():
    """`(True, the GPU JAX sees)` or `(False, why JAX has none)` (no jax, no CUDA plugin, no GPU)."""
    try:
        import jax

        device = jax.devices("gpu")[0]
    except Exception as error:  # ImportError, or RuntimeError: no GPU platform
        return False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return True, f"jax {jax.__version__} on {device.platform}:{device.id} ({device.device_kind})"


def _thread_env(threads, xla_flags):
    """The environment that holds torch (OpenMP), TensorFlow and XLA (jax, tf_xla) to `threads` CPU threads."""
    n = str(threads)
    flags = f"{xla_flags} --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
        "XLA_FLAGS": (flags + f"intra_op_parallelism_threads={n}").strip(),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.check_jax_gpu:
        found, detail = jax_gpu()
        print(("JAX GPU: " if found else "no JAX GPU: ") + detail)
        raise SystemExit(0 if found else 1)
    raw = list(argv if argv is not None else sys.argv[1:])
    rows = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", out] + raw
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            # JAX would take 75% of a GPU at start-up; torch's reference shares that GPU in the process.
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            if args.threads:
                env.update(_thread_env(args.threads, env.get("XLA_FLAGS", "")))
            proc = subprocess.run(cmd, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{backend} worker failed with exit code {proc.returncode}")
            with open(out) as f:
                rows.extend(json.load(f))
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "args": {
            k: (v if k != "shapes" else ["x".join(map(str, s)) for s in v])
            for k, v in vars(args).items()
            if k != "worker"
        },
        "rows": rows,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, args.out)
    print(
        "\nPGD-K + RPAT step and one inference forward; ratio = plain-PyTorch time / time; "
        f"1st step s = the first call (compiles, traces), not in the steady-state columns (wrote {args.out})"
    )
    print(
        f"{'backend':<11} {'model':<20} {'shape':<10} {'config':<25} {'step img/s':>10} {'ratio':>6} "
        f"{'fwd img/s':>10} {'ratio':>6} {'1st step s':>10} {'peak MB':>8}"
    )
    for r in rows:
        shape = f"{r['batch_size']}x{r['image_size']}x{r['pgd_steps']}"
        print(
            f"{r['backend']:<11} {r['model']:<20} {shape:<10} {r['config']:<25} {r['step_images_per_s']:>10.1f} "
            f"{r['step_ratio']:>6.2f} {r['forward_images_per_s']:>10.1f} {r['forward_ratio']:>6.2f} "
            f"{r['first_step_s']:>10.2f} {r['peak_mb']:>8.0f}"
        )
    for r in rows:
        if r["timed_compile_s_per_step"]:
            print(
                f"note: {r['config']} {r['model']} {r['batch_size']}x{r['image_size']}x{r['pgd_steps']}: "
                f"{r['timed_compile_s_per_step']:.2f} s of XLA compilation inside each timed step"
            )


if __name__ == "__main__":
    main()
