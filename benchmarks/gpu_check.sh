#!/usr/bin/env bash
# One-call GPU check for a session that holds a device machine (issue: GPU speed).
#
# Prepare here (once per session; both folders are git-ignored):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#       keras==3.15.1 namex optree absl-py rich ml-dtypes h5py   # keras' own needs
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.npz ../shared/data/decode_cifar10_jpeg.py .data/
# Run there (device tool): carry [".whl", ".data"], command `bash benchmarks/gpu_check.sh`.
# It installs the wheels, decodes CIFAR-10, runs the throughput benchmark on the
# torch backend and the 5-epoch quick check, and copies the JSONs to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 KERAS_BACKEND=torch
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 .data/decode_cifar10_jpeg.py .data/cifar10-jpeg.npz /tmp/cifar10.npz
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# Capture off/on and bf16 off/on for the four models at batch 128 (one process per backend).
python3 benchmarks/throughput.py --backends torch --shapes 128x32x10 --rounds 3 --steps 5 \
  --models resnet18,resnet18_bottleneck,preact_resnet18,wide_resnet34_10 \
  --configs plain_pytorch,keras_eager,keras_fast,keras_fast_capture,keras_fast_bf16,keras_fast_capture_bf16,keras_fast_channels_last \
  --out "${OUT:-/tmp}/throughput.json" | tee /tmp/throughput.txt
# The real-data quick check with the fastest exact setting (fp32, captured).
python3 benchmarks/quickcheck.py --data /tmp/cifar10.npz --capture --out "${OUT:-/tmp}/quickcheck.json" | tee /tmp/quickcheck.txt
echo; echo "== summary"; tail -n 30 /tmp/throughput.txt; tail -n 8 /tmp/quickcheck.txt
