"""The benchmark scripts keep working (their numbers are never asserted)."""

import json
import os
import re
import shlex
import subprocess
import sys

import keras_rpat  # noqa: F401

import keras
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def bench_path():
    sys.path.insert(0, BENCH)
    yield
    sys.path.remove(BENCH)


def test_quickcheck_smoke(tmp_path, bench_path):
    import quickcheck

    out = tmp_path / "qc.json"
    quickcheck.main(["--smoke", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["backend"] == keras.config.backend()
    assert [r["epoch"] for r in record["rows"]] == [1, 2]
    assert all(0.0 <= r["clean"] <= 100.0 and 0.0 <= r["pgd20"] <= 100.0 for r in record["rows"])


def test_throughput_worker_reports_every_configuration(tmp_path, bench_path):
    import throughput

    out = tmp_path / "rows.json"
    backend = keras.config.backend()
    # XLA (tensorflow) and jax_eager are left out: their first steps compile for minutes on 2
    # cores; on jax the step of small_cnn stands in for resnet18's (a minute to compile).
    expected = {
        "torch": throughput.TORCH_CONFIGS,
        "tensorflow": ("plain_pytorch", "tf_function"),
        "jax": ("plain_pytorch", "jax_jit"),
    }[backend]
    model, shape = ("small_cnn", "2x8x2") if backend == "jax" else ("resnet18", "4x8x2")
    args = throughput.parse_args(
        [
            "--smoke",
            "--models",
            model,
            "--shapes",
            shape,
            "--steps",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--configs",
            ",".join(expected),
            "--worker",
            str(out),
        ]
    )
    throughput.worker(args)
    rows = json.loads(out.read_text())
    assert [r["config"] for r in rows] == list(expected)
    for row in rows:
        assert row["backend"] == backend and row["model"] == model
        for key in ("step_images_per_s", "step_ratio", "forward_images_per_s", "forward_ratio", "peak_mb"):
            assert row[key] > 0
        # The first call (tracing, compiling) is timed apart from the steady-state steps.
        assert row["first_step_s"] > 0 and row["first_forward_s"] > 0
        if backend == "jax":
            # Every program the timed steps run was compiled by the first call: no XLA compile in them.
            if row["config"] == "jax_jit":
                assert row["timed_compile_s_per_step"] == 0.0
        else:
            assert row["timed_compile_s_per_step"] is None
    (reference,) = [r for r in rows if r["config"] == "plain_pytorch"]
    assert reference["step_ratio"] == 1.0 and reference["forward_ratio"] == 1.0


def test_throughput_options(bench_path):
    import throughput

    # --smoke sets defaults: the options given win.
    args = throughput.parse_args(["--smoke", "--steps", "1", "--models", "small_cnn"])
    assert (args.models, args.shapes, args.steps, args.rounds, args.warmup) == ("small_cnn", [(4, 8, 2)], 1, 2, 1)
    args = throughput.parse_args(["--smoke"])
    assert (args.models, args.shapes, args.steps, args.rounds, args.warmup) == ("resnet18", [(4, 8, 2)], 2, 2, 1)
    with pytest.raises(SystemExit, match="jx"):
        throughput.parse_args(["--backends", "torch,jx"])
    with pytest.raises(SystemExit, match="jax_jt"):
        throughput.parse_args(["--configs", "plain_pytorch,jax_jt"])
    with pytest.raises(SystemExit, match="BATCHxSIZExPGD_STEPS"):
        throughput.parse_args(["--shapes", "4x8"])
    with pytest.raises(SystemExit, match="--threads"):
        throughput.parse_args(["--threads", "0"])
    env = throughput._thread_env(1, "--xla_dump_to=/tmp/x")
    assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["XLA_FLAGS"].split() == [
        "--xla_dump_to=/tmp/x",
        "--xla_cpu_multi_thread_eigen=false",
        "intra_op_parallelism_threads=1",
    ]


@pytest.mark.skipif(keras.config.backend() != "torch", reason="backend-independent: checked on torch")
def test_small_cnn_reference_is_the_keras_model(bench_path):
    import numpy as np
    import torch
    import torch_reference

    reference = torch_reference.build("small_cnn").eval()
    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3))
    with torch.no_grad():
        for p, v in zip(reference.parameters(), model.trainable_variables, strict=True):
            value = keras.ops.convert_to_numpy(v)
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            p.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), expected, rtol=1e-5, atol=1e-6)


def _gpu_check_throughput_commands():
    """The `benchmarks/throughput.py` argument lists in gpu_check.sh, continuation lines joined."""
    with open(os.path.join(BENCH, "gpu_check.sh")) as f:
        script = re.sub(r"\\\n\s*", " ", f.read())
    commands = re.findall(r"python3 benchmarks/throughput.py ([^|&;\n]*)", script)
    return [shlex.split(c.replace('"${OUT:-/tmp}"', "/tmp")) for c in commands]


def test_gpu_check_runs_known_throughput_options(bench_path):
    import throughput

    commands = _gpu_check_throughput_commands()
    backends = {}
    for argv in commands:
        args = throughput.parse_args(argv)  # exits on an unknown option, backend or configuration
        if not args.check_jax_gpu:
            backends.setdefault(args.backends, set()).update(args.configs.split(","))
    assert backends == {
        "torch": set(throughput.TORCH_CONFIGS + throughput.CUDA_CONFIGS),
        "jax": set(throughput.JAX_CONFIGS),
    }


def _run_gpu_check(tmp_path, parts, path):
    # Run from a folder holding only benchmarks/: no .whl/ to install, nothing written in the checkout.
    os.symlink(BENCH, tmp_path / "benchmarks")
    env = dict(os.environ, PATH=f"{path}{os.pathsep}{os.environ['PATH']}", OUT=str(tmp_path))
    script = os.path.join(BENCH, "gpu_check.sh")
    return subprocess.run(["bash", script, *parts], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_gpu_check_skips_the_jax_rows_without_a_jax_gpu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    proc = _run_gpu_check(tmp_path, ["jax"], bin_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no JAX GPU: " in proc.stdout and "== jax rows skipped" in proc.stdout
    assert not (tmp_path / "throughput_jax.json").exists()


def test_gpu_check_goes_on_when_the_jax_rows_fail(tmp_path):
    # A python3 whose JAX sees a GPU but whose jax worker fails: the script says so and exits 0.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(
        '#!/usr/bin/env bash\ncase "$*" in *--check-jax-gpu*) echo "JAX GPU: fake"; exit 0 ;; '
        '*--backends?jax*) echo "worker failed" >&2; exit 1 ;; esac\nexit 3\n'
    )
    fake.chmod(0o755)
    proc = _run_gpu_check(tmp_path, ["jax"], bin_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "JAX GPU: fake" in proc.stdout and "worker failed" in proc.stdout
    assert "== jax rows FAILED" in proc.stdout
    assert _run_gpu_check(tmp_path / "bin", ["gpu"], bin_dir).returncode == 2  # an unknown part
