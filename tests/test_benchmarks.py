"""The benchmark scripts keep working (their numbers are never asserted)."""

import json
import os
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
    # XLA (tensorflow) is left out: compiling the step costs minutes on 2 cores.
    expected = throughput.TORCH_CONFIGS if keras.config.backend() == "torch" else ("plain_pytorch", "tf_function")
    args = throughput.parse_args(
        [
            "--smoke",
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
        assert row["backend"] == keras.config.backend() and row["model"] == "resnet18"
        for key in ("step_images_per_s", "step_ratio", "forward_images_per_s", "forward_ratio", "peak_mb"):
            assert row[key] > 0
    (reference,) = [r for r in rows if r["config"] == "plain_pytorch"]
    assert reference["step_ratio"] == 1.0 and reference["forward_ratio"] == 1.0
