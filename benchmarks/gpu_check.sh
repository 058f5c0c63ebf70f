#!/usr/bin/env bash
# One-call GPU check for a session that holds a device machine (issue: GPU speed).
#
# Prepare here (once per session; both folders are git-ignored):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#       keras==3.15.1 namex optree absl-py rich ml-dtypes h5py   # keras' own needs
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.npz ../shared/data/decode_cifar10_jpeg.py .data/
# Run there (device tool): carry [".whl", ".data"], command `bash benchmarks/gpu_check.sh`
# (all parts), or name some: `bash benchmarks/gpu_check.sh jax` (parts: torch jax quickcheck).
# It installs the wheels, decodes CIFAR-10, runs the throughput benchmark on the
# torch backend, then on jax, and the 5-epoch quick check, and copies the JSONs to $OUT.
# JAX is not carried (jaxlib and its CUDA plugin outweigh the 64 MiB a call carries): the
# jax rows use the device image's own jax and CUDA plugin, and are skipped with a line
# saying why where JAX sees no GPU; a failure there never stops the other parts.
set -euo pipefail
PARTS="${*:-torch jax quickcheck}"
for part in $PARTS; do
  case "$part" in torch | jax | quickcheck) ;; *) echo "gpu_check.sh: unknown part '$part' (parts: torch jax quickcheck)"; exit 2 ;; esac
done
export PYTHONUNBUFFERED=1 KERAS_BACKEND=torch
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
LOGS=$(mktemp -d)
touch "$LOGS/throughput.txt" "$LOGS/throughput_jax.txt" "$LOGS/quickcheck.txt"
if [[ " $PARTS " == *" torch "* ]]; then
  # Capture off/on and bf16 off/on for the four models at batch 128 (one process per backend).
  python3 benchmarks/throughput.py --backends torch --shapes 128x32x10 --rounds 3 --steps 5 \
    --models resnet18,resnet18_bottleneck,preact_resnet18,wide_resnet34_10 \
    --configs plain_pytorch,keras_eager,keras_fast,keras_fast_capture,keras_fast_bf16,keras_fast_capture_bf16,keras_fast_channels_last \
    --out "${OUT:-/tmp}/throughput.json" | tee "$LOGS/throughput.txt"
fi
if [[ " $PARTS " == *" jax "* ]]; then
  # The whole step as one jax.jit program next to plain PyTorch (same process, same GPU; each
  # row's first step, the compilation, is reported apart), then jit_compile=False, which
  # dispatches op by op and compiles the attack loop at every step: one step, resnet18 only.
  if python3 benchmarks/throughput.py --check-jax-gpu | tee "$LOGS/throughput_jax.txt"; then
    { python3 benchmarks/throughput.py --backends jax --shapes 128x32x10 --rounds 3 --steps 5 \
        --models resnet18,wide_resnet34_10 --configs plain_pytorch,jax_jit \
        --out "${OUT:-/tmp}/throughput_jax.json" &&
      python3 benchmarks/throughput.py --backends jax --shapes 128x32x10 --rounds 1 --steps 1 --warmup 1 \
        --models resnet18 --configs plain_pytorch,jax_eager --out "${OUT:-/tmp}/throughput_jax_eager.json"
    } 2>&1 | tee -a "$LOGS/throughput_jax.txt" || echo "== jax rows FAILED (the error is above); the other parts go on" | tee -a "$LOGS/throughput_jax.txt"
  else
    echo "== jax rows skipped: JAX sees no GPU here (the line above says why)" | tee -a "$LOGS/throughput_jax.txt"
  fi
fi
if [[ " $PARTS " == *" quickcheck "* ]]; then
  # The real-data quick check with the fastest exact setting (fp32, captured).
  python3 .data/decode_cifar10_jpeg.py .data/cifar10-jpeg.npz /tmp/cifar10.npz
  python3 benchmarks/quickcheck.py --data /tmp/cifar10.npz --capture --out "${OUT:-/tmp}/quickcheck.json" | tee "$LOGS/quickcheck.txt"
fi
echo; echo "== summary"; tail -n 30 "$LOGS/throughput.txt"; tail -n 12 "$LOGS/throughput_jax.txt"; tail -n 8 "$LOGS/quickcheck.txt"
