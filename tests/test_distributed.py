"""Data-parallel training and evaluation: 2 ranks x B/2 equal 1 process x B (torch.distributed
under torchrun), 2 replicas x B/2 equal 1 device x B (tf.distribute on tensorflow), 2 devices
x B/2 equal 1 device x B (keras.distribution on jax: a process with 2 CPU devices,
tests/distributed_jax.py; opt-in, 2 processes of one device each).

The torchrun job (tests/distributed_worker.py, gloo, one thread per rank: training
steps, AutoAttack, PGD, perception) costs two interpreter starts and runs while the
test process computes the one-process references; so do the tensorflow jobs (2
logical CPU devices must be set before TensorFlow initialises, hence a process of
their own; 2 workers of a MultiWorkerMirroredStrategy on localhost), AutoAttack's
PyTorch subprocess per replica included (2 under MirroredStrategy, and one for the
one-device reference). The smoke recipe killed and re-run (tests/distributed_cli.py) costs two
jobs more: the dearest test here.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from testing import BACKEND
from testing import float64_precision
from testing import torch_only

import keras_rpat

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_worker  # noqa: E402

if BACKEND == "torch":
    from keras_rpat.backend import torch_distributed
else:
    torch_distributed = None


# pgd_at+rpat on the fast path, trades+rpat on the Keras path, both in float64
# (distributed_worker.train): a 4-image convolution rounds differently from an
# 8-image one, and TRADES' attack starts 0.001 from x, where the sign of the KL
# gradient of some pixels is within float32 rounding (measured: 6e-4 relative
# after 3 steps in float32).
RUNS = ["pgd_at+rpat", "trades+rpat:keras"]
# tensorflow: the same two (the path is torch's); the multi-worker smoke runs the first.
TF_RUNS = ["pgd_at+rpat", "trades+rpat"]
# With AWP (its ascent gradient the global batch's), in each engine's job (torch: on the fast path).
AWP_RUN = "pgd_at+rpat+awp"

tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the tensorflow backend")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_torchrun(args, nproc=2, stdout=subprocess.DEVNULL):
    env = dict(os.environ, OMP_NUM_THREADS="1", KERAS_BACKEND="torch")
    for name in torch_distributed.TORCHRUN_VARIABLES:
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        *map(str, args),
    ]
    return subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)


def _start_tf_worker(out, runs, *options, tf_config=None):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    command = [sys.executable, HERE / "distributed_worker.py", out, *runs, *options]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _tf_configs(workers=2):
    """The `TF_CONFIG` of each of `workers` workers on localhost ports."""
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(workers)]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(workers)]


class _Job:
    """A data-parallel job (its processes), started once; its results (the chief's file) are
    read when a test first needs them (the one-process references are computed meanwhile)."""

    def __init__(self, out, processes):
        self.out = out
        self.processes = processes
        self.results = None

    def wait(self):
        if self.results is None:
            for process in self.processes:
                _, stderr = process.communicate(timeout=300)
                assert process.returncode == 0, stderr[-4000:]
            self.results = dict(np.load(self.out))
        return self.results

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "two.npz"
    job = _Job(out, [_start_torchrun([HERE / "distributed_worker.py", out, *RUNS, AWP_RUN])])
    yield job
    job.stop()


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """MirroredStrategy over 2 logical CPU devices, sync BatchNorm, both TF_RUNS and the AWP run, then AutoAttack."""
    out = tmp_path_factory.mktemp("mirrored") / "two.npz"
    job = _Job(out, [_start_tf_worker(out, [*TF_RUNS, AWP_RUN], "--strategy", "mirrored", "--cpus", "2")])
    # The one-device AutoAttack while the job trains (its own PyTorch subprocess: an interpreter start).
    job.one_device_autoattack = distributed_worker.tf_autoattack(None)
    yield job
    job.stop()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """MultiWorkerMirroredStrategy: 2 worker processes (one CPU device each) on localhost ports."""
    folder = tmp_path_factory.mktemp("multiworker")
    processes = [
        _start_tf_worker(
            folder / f"worker{i}.npz", TF_RUNS[:1], "--strategy", "multiworker", "--aa-resume", tf_config=config
        )
        for i, config in enumerate(_tf_configs())
    ]
    job = _Job(folder / "worker0.npz", processes)
    yield job
    job.stop()


_ONE_PROCESS = {}


def _one_process(run):
    """The one-process (one-device) run of `run`, computed once per module."""
    if run not in _ONE_PROCESS:
        method, path = (run.split(":") + ["fast"])[:2]
        _ONE_PROCESS[run] = distributed_worker.train(method, sync_batchnorm=False, fast_path=path == "fast")
    return _ONE_PROCESS[run]


def _assert_same_steps(one, many, method):
    """Every variable (BatchNorm statistics, teacher) and logged metric of `method` (float64) agree to 1e-9."""
    names = [k for k in one if k.startswith(f"{method}/")]
    assert any("/moving_variance" in k for k in names) and any("/log/loss" in k for k in names)
    for name in names:
        want, got = np.asarray(one[name], np.float64), np.asarray(many[name], np.float64)
        assert want.shape == got.shape and (want.dtype == np.float64 or "/log/" in name), name
        scale = max(np.max(np.abs(want)), 1e-3)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * scale, err_msg=name)
    # The steps did move the weights (a test that cannot fail is a defect).
    kernel = f"{method}/var/conv1/kernel"
    assert np.max(np.abs(one[kernel] - one[f"{method}/initial/conv1/kernel"])) > 1e-3


@torch_only
@pytest.mark.parametrize("run", RUNS)
def test_two_ranks_take_the_one_process_steps(two_ranks, run):
    _assert_same_steps(_one_process(run), two_ranks.wait(), run.split(":")[0])


@tensorflow_only
@pytest.mark.parametrize("run", TF_RUNS)
def test_two_mirrored_replicas_take_the_one_device_steps(two_replicas, run):
    _assert_same_steps(_one_process(run), two_replicas.wait(), run.split(":")[0])


def _assert_same_awp_steps(many, run=AWP_RUN):
    """The AWP run of a job took the one-device steps, which AWP changed."""
    one, method = _one_process(run), run.split(":")[0]
    _assert_same_steps(one, many, method)
    without_awp = _one_process(run.replace("+awp", ""))
    kernel = "/var/conv1/kernel"
    assert np.max(np.abs(one[method + kernel] - without_awp[method.removesuffix("+awp") + kernel])) > 1e-4


@torch_only
def test_two_ranks_take_the_one_process_awp_steps(two_ranks):
    _assert_same_awp_steps(two_ranks.wait())


@tensorflow_only
def test_two_mirrored_replicas_take_the_one_device_awp_steps(two_replicas):
    _assert_same_awp_steps(two_replicas.wait())


def _assert_same_evaluation(one, many, replicas=("0", "1")):
    """Clean, PGD and perception figures of the one-device evaluation, and the `replicas` of this
    process took part."""
    names = [k for k in one if k.startswith("eval/")]
    assert len(names) == 8
    for name in names:  # under the strategy, and for a model built in its scope evaluated outside it
        np.testing.assert_allclose(many[name], one[name], rtol=1e-9, atol=0, err_msg=name)
        np.testing.assert_allclose(many[f"{name}/outside_the_scope"], one[name], rtol=1e-9, atol=0, err_msg=name)
    # Every batch of 8 split 4 + 4 (the last, of 6: 3 + 3) over the 2 replicas, in the 3 evaluations, twice.
    rows = json.loads(str(many["eval/replica_rows"]))
    assert rows == {replica: [4, 4, 3] * 6 for replica in replicas}, rows
    # The attack flipped images and changed logits (a test that cannot fail is a defect).
    assert one["eval/pgd20"] < 100 and one["eval/perception_n_failure"] > 0


@tensorflow_only
def test_two_mirrored_replicas_evaluate_as_one_device(two_replicas):
    _assert_same_evaluation(distributed_worker.evaluate_pgd(), two_replicas.wait())


# Two more TensorFlow processes (~35 s of CPU): over make test's budget, so asked for by name.
MULTIWORKER = os.environ.get("KERAS_RPAT_TEST_MULTIWORKER") == "1"


@tensorflow_only
@pytest.mark.skipif(not MULTIWORKER, reason="set KERAS_RPAT_TEST_MULTIWORKER=1 (2 worker processes, ~35 s CPU)")
def test_two_workers_take_the_one_device_steps(two_workers):
    """MultiWorkerMirroredStrategy (TF_CONFIG, 2 processes): the chief's file has the one-device
    steps; the other worker writes none."""
    _assert_same_steps(_one_process(TF_RUNS[0]), two_workers.wait(), TF_RUNS[0].split(":")[0])
    _assert_same_evaluation(distributed_worker.evaluate_pgd(), two_workers.wait(), replicas=("0",))
    _assert_rank_0s_view(two_workers.wait())
    assert not os.path.exists(str(two_workers.out).replace("worker0", "worker1"))


@tensorflow_only
@pytest.mark.skipif(not MULTIWORKER, reason="set KERAS_RPAT_TEST_MULTIWORKER=1 (2 worker processes, ~35 s CPU)")
def test_two_workers_autoattack_as_one_device(two_workers):
    """MultiWorkerMirroredStrategy: a PyTorch subprocess per worker, one torch.distributed job (the chief's
    port sent by an all-reduce): the one-device adversarial images; the chief's rank 0 alone prints; both
    workers' state files rewound to the end of the clean pass resume to the same accuracy."""
    one = distributed_worker.tf_autoattack(None)
    two = two_workers.wait()
    np.testing.assert_array_equal(two["eval/x_adv"], one["eval/x_adv"])
    assert two["eval/autoattack"] == one["eval/autoattack"]
    assert json.loads(str(two["eval/resumed"])) == [float(one["eval/autoattack"]), True]
    printed = str(two["eval/printed"])
    assert "square - 1-2/6 -" in printed and printed.count("initial accuracy") == 1, printed


@torch_only
def test_two_ranks_evaluate_as_one_process(two_ranks):
    """AutoAttack's batches dealt to the ranks: the one-process adversarial images, bit for bit;
    PGD and the perception analysis split each batch: the one-process accuracies."""
    one = distributed_worker.evaluate()
    two = two_ranks.wait()
    np.testing.assert_array_equal(two["eval/x_adv"], one["eval/x_adv"])
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-9, atol=0, err_msg=name)
    assert 100 > one["eval/autoattack"] > 0 and one["eval/pgd20"] < 100 and one["eval/perception_n_failure"] > 0
    _assert_both_ranks_batches_flipped(one["eval/x_adv"])


def _assert_both_ranks_batches_flipped(x_adv):
    """Images were flipped (a test that cannot fail is a defect) in both ranks' AutoAttack batches:
    the first attack runs batches 0, 2, 4 on rank 0 and 1, 3, 5 on rank 1."""
    fooled = np.any(x_adv != distributed_worker.eval_images()[0], axis=(1, 2, 3))
    per_batch = fooled[: 4 * (len(fooled) // 4)].reshape(-1, 4).any(axis=1)
    assert per_batch[0::2].any() and per_batch[1::2].any(), fooled


@tensorflow_only
def test_two_mirrored_replicas_autoattack_as_one_device(two_replicas):
    """AutoAttack under MirroredStrategy: a PyTorch subprocess per replica, one torch.distributed job of
    2 ranks dealt the batches, gives the one-device adversarial images bit for bit; rank 0 alone prints;
    the caller's state file is the only one written. (Resuming: `test_two_workers_autoattack_as_one_device`.)"""
    one, two = two_replicas.one_device_autoattack, two_replicas.wait()
    np.testing.assert_array_equal(two["eval/x_adv"], one["eval/x_adv"])
    assert two["eval/autoattack"] == one["eval/autoattack"] and 100 > one["eval/autoattack"] > 0
    _assert_both_ranks_batches_flipped(one["eval/x_adv"])
    printed = str(two["eval/printed"])  # rounds of two batches, printed once
    assert "square - 1-2/6 -" in printed and printed.count("initial accuracy") == 1, printed
    assert "square - 1/6 -" in str(one["eval/printed"])
    assert json.loads(str(two["eval/state_files"])) == ["two.npz.aa_state0.json"]


# Stand-ins for the PyTorch subprocesses of 2 replicas: rank 1 fails once rank 0 (which, like a rank in a
# collective, would wait for it forever) has left its pid; `error` fails with a ValueError result, not a crash.
_FAILING_REPLICAS = """
import json, os, sys, time
pids, rank = os.environ["KERAS_RPAT_TEST_PIDS"], os.environ["RANK"]
with open(os.path.join(pids, rank + ".tmp"), "w") as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(pids, rank + ".tmp"), os.path.join(pids, rank))
if rank == "0":
    sys.stdin.read()  # until the parent closes it or dies (as `exit_with_parent` does)
while not os.path.exists(os.path.join(pids, "0")):
    time.sleep(0.01)
if os.environ["KERAS_RPAT_TEST_FAILURE"] == "error":
    with open(os.path.join(sys.argv[1], "result.json"), "w") as f:
        json.dump({"error": "bad state file", "error_type": "ValueError", "warnings": []}, f)
    sys.exit(0)
sys.exit(3)
"""


@pytest.mark.parametrize(
    "failure, error, message",
    [
        (
            "crash",
            RuntimeError,
            r"failed in the PyTorch subprocess of rank 1 \(of 2 replicas\) \(exit code 3; the other",
        ),
        ("error", ValueError, r"^bad state file \(in the PyTorch subprocess of rank 1 \(of 2 replicas\); the other"),
    ],
    ids=["crash", "error"],
)
def test_a_failing_replica_subprocess_raises_and_stops_the_others(failure, error, message, tmp_path, monkeypatch):
    """AutoAttack under tf.distribute (a subprocess per replica): the first one that fails raises its error,
    naming its rank, and its siblings are killed (here rank 0, which would otherwise wait for the parent)."""
    import types

    import keras

    from keras_rpat.autoattack import AutoAttackConfig
    from keras_rpat.autoattack import subprocess as aa_subprocess

    monkeypatch.setattr(aa_subprocess, "_ENTRY", _FAILING_REPLICAS)
    monkeypatch.setenv("KERAS_RPAT_TEST_PIDS", str(tmp_path))
    monkeypatch.setenv("KERAS_RPAT_TEST_FAILURE", failure)
    replicas = types.SimpleNamespace(world_size=2, ranks=(0, 1), gpus=(None, None), master_addr="-", master_port=0)
    model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    config = AutoAttackConfig("linf", 0.03, "custom", ("apgd-ce",), batch_size=4)
    x, y = np.zeros((4, 2, 2, 1), "float32"), np.zeros(4, "int64")
    with pytest.raises(error, match=message):
        aa_subprocess.run(model, x, y, config, replicas)
    pid = int((tmp_path / "0").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def _assert_provenance(provenance, engine, world_size, per_replica_batch, **more):
    assert provenance["engine"] == engine and provenance["world_size"] == world_size, provenance
    assert provenance["per_replica_batch"] == per_replica_batch, provenance
    assert {k: provenance.get(k) for k in more} == more, provenance


@torch_only
def test_two_ranks_record_their_engine_in_the_provenance(two_ranks):
    provenance = json.loads(str(two_ranks.wait()["provenance"]))
    kept = {"process_group": "gloo", "sync_batchnorm": True}
    _assert_provenance(provenance, "torch.distributed", 2, distributed_worker.BATCH // 2, **kept)
    alone = keras_rpat.evaluation.provenance(batch_size=distributed_worker.BATCH)
    _assert_provenance(alone, "single-process", 1, distributed_worker.BATCH, sync_batchnorm=None)


@tensorflow_only
def test_two_mirrored_replicas_record_their_engine_in_the_provenance(two_replicas):
    provenance = json.loads(str(two_replicas.wait()["provenance"]))
    engine = "tf.distribute.MirroredStrategy"
    _assert_provenance(provenance, engine, 2, distributed_worker.BATCH // 2, sync_batchnorm=True, process_group=None)


@torch_only
def test_only_rank_0_prints_autoattack_progress(two_ranks):
    rank0, rank1 = json.loads(str(two_ranks.wait()["printed"]))
    assert "AutoAttack square: " in rank0 and "robust accuracy so far" in rank0, rank0
    assert rank1 == ""


@torch_only
def test_a_rank_without_its_autoattack_state_takes_the_furthest_one(two_ranks):
    # Rank 1 deleted its finished state file: both ranks return the finished result, attacking nothing.
    results = two_ranks.wait()
    assert json.loads(str(results["resumed"])) == [[float(results["eval/autoattack"]), True]] * 2


@torch_only
def test_share_folder_gives_every_rank_rank_0s_files(two_ranks):
    _assert_rank_0s_view(two_ranks.wait())


def _assert_rank_0s_view(results):
    """Every rank (worker) holds rank 0's files and decision, and a configuration that differs
    is refused on every one of them."""
    views = json.loads(str(results["folders"]))
    refused = "Ranks [1] have a different configuration than rank 0: epochs is 11 on rank 1, 10 on rank 0."
    messages = [v.pop("check_same") for v in views]
    assert messages[0] == messages[1] and refused in messages[0], messages
    assert views == [{"only_on_0": "", "weights": "rank 0", "from_primary": "decided on rank 0"}] * 2


@torch_only
def test_shards_tile_the_batch_and_keep_two_view_pairs():
    rows = [torch_distributed.shard_rows(7, r, 2) for r in range(2)]
    assert [list(r) for r in rows] == [[0, 1, 2, 3], [4, 5, 6]]
    pairs = [list(torch_distributed.shard_rows(8, r, 2, groups=2)) for r in range(2)]
    assert pairs == [[0, 1, 4, 5], [2, 3, 6, 7]]


@torch_only
def test_each_rank_draws_its_rows_of_the_one_process_noise():
    import keras

    draws = []
    for rank in range(2):
        seed = keras.random.SeedGenerator(5)
        rows = torch_distributed.shard_rows(6, rank, 2)
        shard = torch_distributed.Shard(rows, 6, sync_batchnorm=False)
        shard.device_rows = keras.ops.convert_to_tensor(rows)
        with torch_distributed.shard_scope(shard):
            draws.append(keras.ops.convert_to_numpy(keras_rpat.backend.random_uniform((3, 2), seed=seed)))
            beta = keras.ops.convert_to_numpy(keras_rpat.backend.random_beta(0.75, 0.75, seed=seed))
        draws[-1] = (draws[-1], float(beta))
    alone = keras.random.SeedGenerator(5)
    whole = keras.ops.convert_to_numpy(keras_rpat.backend.random_uniform((6, 2), seed=alone))
    beta = float(keras.ops.convert_to_numpy(keras_rpat.backend.random_beta(0.75, 0.75, seed=alone)))
    np.testing.assert_array_equal(np.concatenate([draws[0][0], draws[1][0]]), whole)
    assert not np.array_equal(draws[0][0], draws[1][0])
    assert draws[0][1] == draws[1][1] == beta  # a per-batch draw is the same on every rank


def _sync_batchnorm_trainer():
    """A compiled trainer with `sync_batchnorm=True`: outside a data-parallel job, `fit` names the fix."""
    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3))
    trainer = keras_rpat.RPATTrainer(model, sync_batchnorm=True)
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1))
    return trainer


@torch_only
def test_sync_batchnorm_without_a_job_names_the_fix(monkeypatch):
    for name in torch_distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    trainer = _sync_batchnorm_trainer()
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        trainer.fit(distributed_worker.Batches(), epochs=1, verbose=0)


@torch_only
def test_a_rank_started_by_hand_names_torchrun(monkeypatch):
    for name in torch_distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(torch_distributed.DistributedError, match="MASTER_ADDR.*torchrun"):
        torch_distributed.initialize()


@torch_only
def test_a_batch_the_ranks_cannot_split_names_a_batch_size():
    with pytest.raises(torch_distributed.DistributedError, match="multiple of 4.*--batch-size 8"):
        torch_distributed.check_batch(10, 4)


@torch_only
@pytest.mark.parametrize("command", [["train", "--method", "pgd_at", "--dataset", "synthetic"], ["recipe", "figure2"]])
def test_cli_sync_batchnorm_without_torchrun_names_the_fix(command, tmp_path, monkeypatch):
    from testing import invoke

    from keras_rpat.cli import main

    for name in torch_distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    result = invoke(main, [*command, "--smoke", "--sync-batchnorm", "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "--sync-batchnorm needs a data-parallel job" in result.output and "torchrun" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@torch_only
def test_cli_rank_started_by_hand_is_a_usage_error(tmp_path, monkeypatch):
    from testing import invoke

    from keras_rpat.cli import main

    for name in torch_distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke(main, ["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke", "--out", tmp_path])
    assert result.exit_code == 2 and "Start every rank with torchrun" in result.output, result.output


# The cheapest recipe run with AutoAttack; backed up after every step (2 steps).
SMOKE_RECIPE = ["recipe", "table1", "--smoke", "--dataset", "cifar10", "--method", "pgd_at", "--checkpoint-every", "1"]
SMOKE_RUN = pathlib.Path("pgd_at", "smoke-small_cnn-synthetic-linf-for-cifar10-resnet18_bottleneck", "seed0")
# What differs between any two runs, and the hash of the weights' bits (2 ranks x 16 rows round
# differently from 32 rows: the weights are compared through the logged losses).
VOLATILE = {"provenance", "wall_time_s", "train_time_s", "time", "eval_time", "model_sha256"}


def _differences(want, got, where=""):
    """What differs between two runs' JSON, numbers to float64 rounding: both run in float64 (PGD's
    sign steps make a float32 chain chaotic: 2 ranks' rounding would grow past any float32 tolerance)."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = (set(want) | set(got)) - VOLATILE
        return [d for k in sorted(keys) for d in _differences(want.get(k), got.get(k), f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in _differences(w, g, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if np.isclose(got, want, rtol=1e-9, atol=1e-12) else [f"{where}: {got} != {want}"]
    return [] if want == got else [f"{where}: {got!r} != {want!r}"]


def _assert_same_recipe_files(want, got):
    """`got` (rank 0's --out) holds every JSON file of `want` with the same numbers, and its Markdown table."""
    from keras_rpat import _io

    want_files = sorted(p.relative_to(want) for p in want.rglob("*.json"))
    got_files = sorted(p.relative_to(got) for p in got.rglob("*.json"))
    assert got_files == want_files and len(want_files) > 8
    for name in want_files:
        found = _differences(_io.read_json(want / name), _io.read_json(got / name))
        assert not found, (name, found[:5])
    assert (got / "table1.md").read_text() == (want / "table1.md").read_text()


@torch_only
def test_two_rank_smoke_recipe_killed_then_rerun_writes_the_one_process_results(tmp_path):
    """SIGKILL of rank 1 after its step-1 backup: torchrun names the rank; the same command
    again resumes from the backup and writes the files of the uninterrupted one-process run."""
    from testing import invoke

    from keras_rpat import _io
    from keras_rpat.cli import main

    out = tmp_path / "two"
    rank0_backup = out / SMOKE_RUN / "backup" / "training_metadata.json"
    command = [*SMOKE_RECIPE, "--sync-batchnorm", "--out", out]
    killed = _start_torchrun([HERE / "distributed_cli.py", "--float64", "--kill-rank-1-at", 1, rank0_backup, *command])
    with float64_precision():
        one = invoke(main, [*SMOKE_RECIPE, "--out", tmp_path / "one", "-q"])  # meanwhile, one process
    assert one.exit_code == 0, one.output
    _, stderr = killed.communicate(timeout=300)
    assert killed.returncode != 0
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: -9", stderr), stderr[-3000:]
    assert _io.read_json(rank0_backup)["batch"] == 1 and not (out / SMOKE_RUN / "trained.json").exists()
    assert (out / ".rank1" / SMOKE_RUN / "backup").is_dir()  # rank 1's state, kept for the rerun

    rerun = _start_torchrun([HERE / "distributed_cli.py", "--float64", *command], stdout=subprocess.PIPE)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-4000:]
    assert "after epoch 0, batch 1" in stdout, stdout
    _assert_same_recipe_files(tmp_path / "one", out)
    assert (out / SMOKE_RUN / "training_curves.png").exists()
    _assert_no_rank_folders(tmp_path, out, "torch.distributed")


def test_rank_folders():
    from keras_rpat.cli import launch

    assert launch.rank_folder("runs/x", 0) == "runs/x"
    assert launch.rank_folder("runs/x", 3) == os.path.join("runs", "x", ".rank3")  # inside the folder named
    assert launch.rank_file("runs/aa.json", 1) == os.path.join("runs", ".aa.json.rank1")


def _assert_no_rank_folders(tmp_path, out, engine, world_size=2):
    """The command completed: no rank's private folder is left, in --out or beside it, and each run's
    results.json records the engine, its world size and the per-replica batch."""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert list(out.rglob(".rank*")) == []
    results = list(out.glob("*/*/seed*/results.json"))
    assert results
    for path in results:
        spec = json.loads(path.read_text())["run"]
        provenance = json.loads(path.read_text())["provenance"]
        _assert_provenance(provenance, engine, world_size, spec["batch_size"] // world_size, sync_batchnorm=True)


@tensorflow_only
def test_tf_replica_rows_tile_the_batch_and_keep_two_view_pairs():
    from keras_rpat.backend import tensorflow_distributed

    rows = [tensorflow_distributed.shard_rows(7, r, 2).numpy().tolist() for r in range(2)]
    assert rows == [[0, 1, 2, 3], [4, 5, 6]]
    pairs = [tensorflow_distributed.shard_rows(8, r, 2, groups=2).numpy().tolist() for r in range(2)]
    assert pairs == [[0, 1, 4, 5], [2, 3, 6, 7]]


@tensorflow_only
def test_tf_each_replica_draws_its_rows_of_the_one_device_noise():
    import keras
    import tensorflow as tf

    from keras_rpat.backend import tensorflow_distributed

    draws = []
    for rows in ([0, 1, 2], [3, 4, 5]):
        seed = keras.random.SeedGenerator(5)
        shard = tensorflow_distributed.Shard(tf.constant(rows), tf.constant(6), sync_batchnorm=False)
        with tensorflow_distributed.shard_scope(shard):
            draws.append(keras.ops.convert_to_numpy(keras_rpat.backend.random_uniform((3, 2), seed=seed)))
    whole = keras.ops.convert_to_numpy(keras_rpat.backend.random_uniform((6, 2), seed=keras.random.SeedGenerator(5)))
    np.testing.assert_array_equal(np.concatenate(draws), whole)
    assert not np.array_equal(draws[0], draws[1])


@tensorflow_only
def test_tf_sync_batchnorm_without_a_strategy_names_the_fix():
    trainer = _sync_batchnorm_trainer()
    with pytest.raises(ValueError, match="sync_batchnorm=True.*tf.distribute strategy's scope"):
        trainer.fit(distributed_worker.Batches(), epochs=1, verbose=0)


def test_a_batch_the_devices_cannot_split_names_a_batch_size(monkeypatch):
    """The check in `fit` (both backends): a job of 2 devices and a global batch of 7."""
    import dataclasses

    @dataclasses.dataclass
    class TwoDevices:
        world_size: int = 2

    monkeypatch.setattr(keras_rpat.backend, "initialize_distributed", lambda *args, **kwargs: TwoDevices())
    model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3))
    trainer = keras_rpat.RPATTrainer(model)
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1))
    x, y = np.zeros((7, 8, 8, 3), "float32"), np.zeros(7, "int64")
    with pytest.raises(ValueError, match="batch of 7 images does not split over 2 devices.*multiple of 2 \\(e.g. 6\\)"):
        trainer.fit(x, y, batch_size=7, epochs=1, verbose=0)


_SMOKE_TRAIN = ["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke"]


@torch_only
def test_cli_strategy_on_torch_names_torchrun(tmp_path):
    from testing import invoke

    from keras_rpat.cli import main

    result = invoke(main, [*_SMOKE_TRAIN, "--strategy", "mirrored", "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "--strategy mirrored is tf.distribute's" in result.output and "torchrun" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@tensorflow_only
@pytest.mark.parametrize(
    "tf_config, options, message",
    [
        ("{not json", [], "TF_CONFIG is not JSON"),
        ('{"cluster": {}}', ["--strategy", "multiworker"], "TF_CONFIG needs a cluster with workers"),
        (None, ["--strategy", "multiworker"], "--strategy multiworker needs TF_CONFIG.*or a Slurm job step"),
        (None, ["--sync-batchnorm"], "--sync-batchnorm needs a data-parallel job.*--strategy mirrored"),
    ],
)
def test_cli_tf_distribute_mistakes_name_the_fix(tf_config, options, message, tmp_path, monkeypatch):
    from testing import invoke

    from keras_rpat.cli import main

    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    result = invoke(main, [*_SMOKE_TRAIN, *options, "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output, re.S), result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@tensorflow_only
def test_a_slurm_step_gives_each_task_its_worker(monkeypatch):
    """--strategy multiworker under srun without TF_CONFIG: one worker per task, nodes in order,
    ports counted up per node; a task the layout puts on another node is refused with the fix."""
    from keras_rpat.backend import tensorflow_distributed

    slurm = {
        "SLURM_STEP_NUM_TASKS": "5",
        "SLURM_STEP_NODELIST": "gpu[07-08],hx",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
    }
    for name, value in {**slurm, "SLURM_PROCID": "3", "SLURMD_NODENAME": "gpu08"}.items():
        monkeypatch.setenv(name, value)
    assert tensorflow_distributed.slurm_step()
    assert tensorflow_distributed.slurm_tf_config(port=2000) == {
        "cluster": {"worker": ["gpu07:2000", "gpu07:2001", "gpu08:2000", "gpu08:2001", "hx:2000"]},
        "task": {"type": "worker", "index": 3},
    }
    monkeypatch.setenv("SLURMD_NODENAME", "hx")
    with pytest.raises(ValueError, match=r"task 3 runs on hx.*puts it on gpu08.*--distribution=block"):
        tensorflow_distributed.slurm_tf_config()
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "two")
    with pytest.raises(ValueError, match=r"Could not read the Slurm job step.*'two'.*srun"):
        tensorflow_distributed.slurm_tf_config()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert not tensorflow_distributed.slurm_step()


@torch_only
def test_two_rank_eval_and_autoattack_commands_write_the_one_process_results(tmp_path):
    """`torchrun -m keras_rpat.cli eval` / `autoattack`: the ranks split the evaluation, rank 0 prints
    and writes the one-process results; rank 1 keeps its own AutoAttack state file."""
    import keras
    from testing import invoke

    from keras_rpat import _io
    from keras_rpat.cli import main

    keras.utils.set_random_seed(0)
    distributed_worker.float64_eval_model().save(tmp_path / "model.keras")  # the ranks' PGD to float64 rounding
    x, y = distributed_worker.eval_images()
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    common = [tmp_path / "model.keras", "--dataset", tmp_path / "data.npz", "--epsilon", "3/255"]
    evaluation = ["eval", *common, "--attacks", "clean,pgd20", "--num-steps", "3", "--batch-size", "8"]
    autoattack = ["autoattack", *common, "--attacks", "square,apgd-ce", "--batch-size", "4"]
    autoattack += ["--option", "apgd.n_iter=3", "--option", "square.n_queries=8"]

    def commands(folder):
        return [*evaluation, "--out", folder / "eval.json"], [*autoattack, "--state", folder / "aa_state.json"]

    (tmp_path / "two").mkdir()
    first, second = commands(tmp_path / "two")
    command = [HERE / "distributed_cli.py", "--float64", *first, "+++", *second, "--out", tmp_path / "two/aa.json"]
    job = _start_torchrun(command, stdout=subprocess.PIPE)
    (tmp_path / "one").mkdir()
    for command, out in zip(commands(tmp_path / "one"), ([], ["--out", tmp_path / "one/aa.json"])):
        with float64_precision():
            done = invoke(main, [*command, *out])  # meanwhile, one process
        assert done.exit_code == 0, done.output
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-4000:]
    assert stdout.count("Evaluating model.keras") == 2 and stdout.count("(2 ranks)") == 2, stdout  # rank 0 only
    for name in ("eval.json", "aa.json"):
        found = _differences(_io.read_json(tmp_path / "one" / name), _io.read_json(tmp_path / "two" / name))
        assert not found, (name, found[:5])
    aa = _io.read_json(tmp_path / "two" / "aa.json")
    assert 0 < aa["autoattack"] < aa["clean"] == 100  # the attacks flipped some images (the test can fail)
    assert _io.read_json(tmp_path / "two" / ".aa_state.json.rank1")["complete"]


# ---------------------------------------------------------------------------- MultiWorkerMirroredStrategy recipes
def _start_tf_workers(args, stdout=subprocess.DEVNULL):
    """2 MultiWorkerMirroredStrategy workers on localhost, each running `python ARGS` (TF_CONFIG set)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    processes = []
    for config in _tf_configs():
        env["TF_CONFIG"] = json.dumps(config)
        command = [sys.executable, *map(str, args)]
        processes.append(subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True))
    return processes


@pytest.fixture(scope="module")
def one_device_smoke_recipe(tmp_path_factory):
    """The one-device smoke recipe, run in the test process (tensorflow)."""
    from testing import invoke

    from keras_rpat.cli import main

    out = tmp_path_factory.mktemp("one_device") / "one"
    with pytest.MonkeyPatch.context() as patch, float64_precision():
        patch.delenv("TF_CONFIG", raising=False)
        result = invoke(main, [*SMOKE_RECIPE, "--out", out, "-q"])
    assert result.exit_code == 0, result.output
    return out


def _finish(processes, timeout=300):
    """`(returncode, stdout, stderr)` of each process, once all ended (a hang fails the test)."""
    outputs = [p.communicate(timeout=timeout) for p in processes]
    return [(p.returncode, *output) for p, output in zip(processes, outputs)]


@tensorflow_only
@pytest.mark.skipif(
    not MULTIWORKER, reason="set KERAS_RPAT_TEST_MULTIWORKER=1 (2 worker processes and the one-device run, ~60 s)"
)
def test_two_worker_smoke_recipe_writes_the_one_device_results(tmp_path, one_device_smoke_recipe):
    out = tmp_path / "two"
    workers = _start_tf_workers(
        [HERE / "distributed_cli.py", "--float64", *SMOKE_RECIPE, "--sync-batchnorm", "--out", out]
    )
    for returncode, _, stderr in _finish(workers):
        assert returncode == 0, stderr[-4000:]
    _assert_same_recipe_files(one_device_smoke_recipe, out)
    _assert_no_rank_folders(tmp_path, out, "tf.distribute.MultiWorkerMirroredStrategy")


@tensorflow_only
@pytest.mark.skipif(
    not MULTIWORKER, reason="set KERAS_RPAT_TEST_MULTIWORKER=1 (2 worker processes, twice: 45 to 100 s)"
)
@pytest.mark.parametrize("kill", ["--kill-rank-1-at", "--kill-rank-1-before-backup-at"])
def test_two_worker_smoke_recipe_killed_then_rerun_writes_the_one_device_results(
    kill, tmp_path, one_device_smoke_recipe
):
    """SIGKILL of worker 1 after its step-1 backup, or just before it (the workers' backups one step
    apart): worker 0 stops with an error that names worker 1 and the fix (TensorFlow's coordination
    service misses worker 1's heartbeats); the same command again on both workers resumes from the
    chief's backup and writes the files of the uninterrupted one-device run."""
    from keras_rpat import _io

    out = tmp_path / "two"
    rank0_backup = out / SMOKE_RUN / "backup" / "training_metadata.json"
    rank1_backup = out / ".rank1" / SMOKE_RUN / "backup" / "training_metadata.json"
    command = [*SMOKE_RECIPE, "--sync-batchnorm", "--out", out]
    killed = _finish(_start_tf_workers([HERE / "distributed_cli.py", "--float64", kill, 1, rank0_backup, *command]))
    (chief_code, _, chief_err), (worker_code, _, _) = killed
    assert worker_code == -9 and chief_code == 1, chief_err[-3000:]
    assert re.search(
        r"Error: Worker 1 of this MultiWorkerMirroredStrategy job stopped sending heartbeats: .* worker 0 "
        r"cannot go on without it, so it stops too\. Re-run the same command on every worker",
        chief_err,
    ), chief_err[-3000:]
    assert "Traceback" not in chief_err
    assert _io.read_json(rank0_backup)["batch"] == 1 and not (out / SMOKE_RUN / "trained.json").exists()
    assert rank1_backup.exists() == (kill == "--kill-rank-1-at")

    rerun = _finish(_start_tf_workers([HERE / "distributed_cli.py", "--float64", *command], stdout=subprocess.PIPE))
    for returncode, _, stderr in rerun:
        assert returncode == 0, stderr[-4000:]
    assert "after epoch 0, batch 1" in rerun[0][1], rerun[0][1]
    _assert_same_recipe_files(one_device_smoke_recipe, out)
    _assert_no_rank_folders(tmp_path, out, "tf.distribute.MultiWorkerMirroredStrategy")


@tensorflow_only
def test_tf_dead_worker_error_names_the_worker_and_the_fix(monkeypatch):
    """What TensorFlow 2.21 raised on worker 0 when worker 1 was killed (measured), as the error users see;
    other errors, and errors outside a multi-worker job, are left alone."""
    import types

    import tensorflow as tf

    from keras_rpat.backend import tensorflow_distributed

    resolver = types.SimpleNamespace(task_type="worker", task_id=0)
    strategy = types.SimpleNamespace(cluster_resolver=resolver)
    job = tensorflow_distributed.Context(0, 2, 0, "multiworker", strategy)
    reported = (
        "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy "
        "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed."
    )
    error = tf.errors.UnavailableError(None, None, reported)
    assert tensorflow_distributed.worker_failure(error) is None  # no multi-worker job here
    monkeypatch.setattr(tensorflow_distributed, "context", lambda: job)
    failure = keras_rpat.backend.worker_failure(error)
    assert isinstance(failure, keras_rpat.backend.DistributedError)
    assert str(failure).startswith("Worker 1 of this MultiWorkerMirroredStrategy job stopped sending heartbeats")
    assert "Re-run the same command on every worker (the same TF_CONFIG)" in str(failure)
    reset = tf.errors.UnavailableError(None, None, "recvmsg:Connection reset by peer ... /job:worker/replica:0/task:0")
    resolver.task_id = 1
    assert str(keras_rpat.backend.worker_failure(reset)).startswith(
        "Worker 0 of this MultiWorkerMirroredStrategy job closed its connection"
    )
    assert keras_rpat.backend.worker_failure(tf.errors.InvalidArgumentError(None, None, "bad shape")) is None
    assert keras_rpat.backend.worker_failure(ValueError("task:1")) is None


# ---------------------------------------------------------------------------- keras.distribution (jax)
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution's data parallelism is tested on jax")
# ReBAT attacks with BatchNorm in training mode; pgd_at+rpat takes two views. The Keras path: jax has no other.
JAX_RUNS = ["pgd_at+rpat", "rebat"]
TWO_DEVICES = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()}


def _start_jax(args, env, stdout=subprocess.DEVNULL):
    from keras_rpat.backend import jax_distributed

    variables = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    for name in jax_distributed.PROCESS_VARIABLES:
        variables.pop(name, None)
    command = [sys.executable, *map(str, args)]
    return subprocess.Popen(command, env=variables | env, stdout=stdout, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """One process, a DataParallel over 2 CPU devices: both JAX_RUNS and the AWP run, then the evaluation."""
    out = tmp_path_factory.mktemp("keras_distribution") / "two.npz"
    job = _Job(out, [_start_jax([HERE / "distributed_jax.py", out, *JAX_RUNS, AWP_RUN], TWO_DEVICES)])
    yield job
    job.stop()


@jax_only
@pytest.mark.parametrize("method", JAX_RUNS)
def test_two_jax_devices_take_the_one_device_steps(two_devices, method):
    results = two_devices.wait()
    _assert_same_steps(_one_process(f"{method}:keras"), results, method)
    # Every traced step saw the global batch of 8 images split into 2 shards of 4.
    shards = json.loads(str(results["shards"]))["train"]
    assert shards and all(s == [[4, 8, 8, 3]] for s in shards), shards


@jax_only
def test_two_jax_devices_take_the_one_device_awp_steps(two_devices):
    _assert_same_awp_steps(two_devices.wait(), f"{AWP_RUN}:keras")


def _assert_same_jax_evaluation(one, many, rows):
    names = [k for k in one if k.startswith("eval/")]
    assert len(names) == 8
    for name in names:
        np.testing.assert_allclose(many[name], one[name], rtol=1e-9, atol=0, err_msg=name)
    assert one["eval/pgd20"] < 100 and one["eval/perception_n_failure"] > 0  # the attack flipped images
    # Every evaluation batch (8, 8, then the last 6 of 22 images) was split in halves over the devices.
    shards = json.loads(str(many["shards"]))["eval"]
    assert shards and all(s[0][0] in rows and s[0][1:] == [8, 8, 3] for s in shards), shards


@jax_only
def test_two_jax_devices_evaluate_as_one_device(two_devices):
    _assert_same_jax_evaluation(distributed_worker.evaluate_pgd(), two_devices.wait(), (4, 3))


@pytest.fixture(scope="module")
def two_jax_processes(tmp_path_factory):
    """2 processes of one CPU device each (jax.distributed over localhost, gloo), each feeding its rows."""
    folder = tmp_path_factory.mktemp("jax_processes")
    environments = _processes(f"127.0.0.1:{_free_port()}")
    processes = [
        _start_jax([HERE / "distributed_jax.py", folder / f"process{i}.npz", JAX_RUNS[0]], env)
        for i, env in enumerate(environments)
    ]
    job = _Job(folder / "process0.npz", processes)
    yield job
    job.stop()


@jax_only
@pytest.mark.skipif(not MULTIWORKER, reason="set KERAS_RPAT_TEST_MULTIWORKER=1 (2 jax processes, ~60 s CPU)")
def test_two_jax_processes_take_the_one_device_steps_and_evaluate_as_it(two_jax_processes):
    results = two_jax_processes.wait()
    _assert_same_steps(_one_process(f"{JAX_RUNS[0]}:keras"), results, JAX_RUNS[0])
    shards = json.loads(str(results["shards"]))["train"]  # each process's 4 rows: one shard of the global 8
    assert shards and all(s == [[4, 8, 8, 3]] for s in shards), shards
    _assert_same_jax_evaluation(distributed_worker.evaluate_pgd(), results, (4, 3))
    assert json.loads(str(results["context"])) == [0, 2, "keras.distribution", 2]
    _assert_rank_0s_view(results)  # share_folder, from_primary, check_same_on_all_ranks over multihost_utils
    assert not os.path.exists(str(two_jax_processes.out).replace("process0", "process1"))  # process 0 writes


@jax_only
def test_two_jax_devices_context_provenance_and_sync_batchnorm_false(two_devices):
    results = two_devices.wait()
    assert json.loads(str(results["context"])) == [0, 2, "keras.distribution", 1]
    provenance = json.loads(str(results["provenance"]))
    _assert_provenance(provenance, "keras.distribution", 2, distributed_worker.BATCH // 2, sync_batchnorm=True)
    refused = str(results["sync_batchnorm_false"])
    assert "sync_batchnorm=False asks each device to normalise with its own rows" in refused, refused
    assert "Build the trainer with sync_batchnorm=True" in refused, refused


@jax_only
def test_jax_sync_batchnorm_without_a_distribution_names_the_fix():
    trainer = _sync_batchnorm_trainer()
    with pytest.raises(ValueError, match="sync_batchnorm=True.*keras.distribution.DataParallel"):
        trainer.fit(distributed_worker.Batches(), epochs=1, verbose=0)


@torch_only
def test_cli_distribution_on_torch_names_torchrun(tmp_path):
    from testing import invoke

    from keras_rpat.cli import main

    result = invoke(main, [*_SMOKE_TRAIN, "--distribution", "data_parallel", "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "--distribution data_parallel is keras.distribution's, for the jax backend" in result.output
    assert "torchrun" in result.output and "Traceback" not in result.output and not (tmp_path / "out").exists()


@jax_only
@pytest.mark.parametrize(
    "options, environment, message",
    [
        (["--strategy", "mirrored"], {}, "--strategy mirrored is tf.distribute's.*use --distribution data_parallel"),
        (["--sync-batchnorm"], {}, "--sync-batchnorm needs a data-parallel job.*--distribution data_parallel"),
        (
            ["--distribution", "data_parallel"],
            {"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"},
            "KERAS_DISTRIBUTION_JOB_ADDRESSES, .*KERAS_DISTRIBUTION_PROCESS_ID unset",
        ),
        ([], {"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "Received: KERAS_DISTRIBUTION_NUM_PROCESSES='two'"),
    ],
    ids=["strategy", "sync_batchnorm_alone", "processes_half_described", "processes_not_a_number"],
)
def test_cli_jax_distribution_mistakes_name_the_fix(options, environment, message, tmp_path, monkeypatch):
    from testing import invoke

    from keras_rpat.backend import jax_distributed
    from keras_rpat.cli import main

    for name in jax_distributed.PROCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = invoke(main, [*_SMOKE_TRAIN, *options, "--out", tmp_path / "out"])
    assert result.exit_code == 2 and re.search(message, result.output), result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def _processes(address, count=2):
    """The environment of each of `count` jax processes joined at `address`."""
    common = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": address, "KERAS_DISTRIBUTION_NUM_PROCESSES": str(count)}
    return [common | {"KERAS_DISTRIBUTION_PROCESS_ID": str(i)} for i in range(count)]


@jax_only
@pytest.mark.parametrize(
    "processes",
    [
        1,
        pytest.param(
            2, marks=pytest.mark.skipif(not MULTIWORKER, reason="set KERAS_RPAT_TEST_MULTIWORKER=1 (2 jax processes)")
        ),
    ],
    ids=["two_devices", "two_processes"],
)
def test_jax_eval_command_writes_the_one_device_results(processes, tmp_path):
    """`keras-rpat eval --distribution data_parallel` on 2 devices (one process, or one device in each of
    2 processes: process 0 prints and writes) writes the one-device figures."""
    import keras
    from testing import invoke

    from keras_rpat import _io
    from keras_rpat.cli import main

    keras.utils.set_random_seed(0)
    with float64_precision():  # jax keeps float64 weights only with jax_enable_x64
        distributed_worker.float64_eval_model().save(tmp_path / "model.keras")
    x, y = distributed_worker.eval_images()
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    command = ["eval", tmp_path / "model.keras", "--dataset", tmp_path / "data.npz", "--epsilon", "3/255"]
    command += ["--attacks", "clean,pgd20", "--num-steps", "3", "--batch-size", "8"]
    two = [HERE / "distributed_cli.py", "--float64", *command, "--distribution", "data_parallel"]
    environments = [TWO_DEVICES] if processes == 1 else _processes(f"127.0.0.1:{_free_port()}")
    jobs = [_start_jax([*two, "--out", tmp_path / "two.json"], env, subprocess.PIPE) for env in environments]
    with float64_precision():
        one = invoke(main, [*command, "--out", tmp_path / "one.json"])  # meanwhile, one device
    assert one.exit_code == 0, one.output
    printed = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-4000:]
        printed.append(stdout)
    assert "(2 ranks)" in printed[0] and all("Evaluating" not in p for p in printed[1:]), printed  # process 0 prints
    want, got = _io.read_json(tmp_path / "one.json"), _io.read_json(tmp_path / "two.json")
    found = _differences(want, got)
    assert not found, found[:5]
    assert 0 < got["pgd20"] < got["clean"] == 100, got  # the attack flipped some images (the test can fail)
    provenance = got["provenance"]
    assert provenance["engine"] == "keras.distribution" and provenance["world_size"] == 2, provenance
    assert provenance["device"] == "2 x cpu:0", provenance  # the weights, on both devices


@jax_only
def test_cli_training_in_several_jax_processes_names_the_fix(tmp_path, monkeypatch):
    """The CLI gives every process the whole dataset, and Keras on jax wants each process's share: refused."""
    import jax
    from testing import invoke

    from keras_rpat.cli import main

    job = keras_rpat.backend.Context(rank=0, world_size=2, local_rank=0, backend="keras.distribution")
    monkeypatch.setattr(keras_rpat.backend, "initialize_distributed", lambda *args, **kwargs: job)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    result = invoke(main, [*_SMOKE_TRAIN, "--distribution", "data_parallel", "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "Training with 2 jax processes is not supported by the CLI yet" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
