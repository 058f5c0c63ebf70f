"""A few training steps and an evaluation under `keras.distribution` on jax (tests/test_jax_distributed.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax python tests/distributed_jax.py OUT.npz rebat
    KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:PORT KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=I \\
        KERAS_BACKEND=jax python tests/distributed_jax.py OUT.npz pgd_at+rpat

`keras_rpat.backend.initialize_distributed(strategy="data_parallel")` (what the CLI's
`--distribution data_parallel` does) sets a `DataParallel` over every device of the job,
joining the processes the `KERAS_DISTRIBUTION_*` variables name. Then, as
`distributed_worker` (whose `train` and `evaluate_pgd` run here), each method trains
`STEPS` steps of the global batch in float64 (in a job of several processes each feeds
its rows of every batch, Keras' convention), and the `evaluate` convnet is evaluated
(clean, PGD, perception); process 0 writes the variables, logs and figures to OUT.npz,
with the shard shapes of the images the train steps and the evaluation saw (`shards`),
the job's context and provenance, and (several processes) each one's view of
`share_folder`, `from_primary` and `check_same_on_all_ranks`.
"""

import argparse
import json

import jax
import numpy as np

import keras_rpat
import keras_rpat.backend  # an internal module: imported by name (the package loads its public API on first use)
from keras_rpat.backend import jax_distributed
from keras_rpat.backend import jax_engine

import distributed_worker  # noqa: I001  (tests/ is on sys.path: the script's folder)


class ProcessBatches(distributed_worker.Batches):
    """This process's rows of each of `distributed_worker.Batches`' global batches."""

    def __init__(self, rank, processes):
        super().__init__()
        rows = distributed_worker.BATCH // processes
        self.x = self.x[:, rank * rows : (rank + 1) * rows]
        self.y = self.y[:, rank * rows : (rank + 1) * rows]


def record_shards():
    """Records the shard shapes of the images of each traced train step (`"train"`) and of each
    evaluation batch (`"eval"`, `map_rows`' first input)."""
    seen, train_step, map_rows = {"train": [], "eval": []}, jax_engine.JaxEngine.train_step, jax_distributed.map_rows

    def shapes(sharding, x):
        return sorted({tuple(shard) for shard in [sharding.shard_shape(x.shape)]})

    def recording_step(self, state, data):
        jax.debug.inspect_array_sharding(data[0], callback=lambda s: seen["train"].append(shapes(s, data[0])))
        return train_step(self, state, data)

    def recording_rows(fn, arrays):
        def recording_fn(x, *rest):
            seen["eval"].append(shapes(x.sharding, x) if isinstance(x, jax.Array) else "not a jax array")
            return fn(x, *rest)

        return map_rows(recording_fn, arrays)

    jax_engine.JaxEngine.train_step = recording_step
    jax_distributed.map_rows = recording_rows
    return seen


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+", help="methods")
    args = parser.parse_args()
    job = keras_rpat.backend.initialize_distributed(strategy="data_parallel")
    shards = record_shards()
    data = ProcessBatches(job.rank, jax.process_count()) if jax.process_count() > 1 else None
    results = {}
    for method in args.runs:
        results.update(distributed_worker.train(method, sync_batchnorm=True, fast_path=False, data=data))
    try:  # the other engines' default: refused on jax, which normalises over the global batch
        distributed_worker.train(args.runs[0], sync_batchnorm=False, fast_path=False, data=data)
        results["sync_batchnorm_false"] = np.array("accepted")
    except ValueError as e:
        results["sync_batchnorm_false"] = np.array(str(e))
    results.update(distributed_worker.evaluate_pgd())
    results["shards"] = np.array(json.dumps(shards))
    results["context"] = np.array(json.dumps([job.rank, job.world_size, job.backend, jax.process_count()]))
    provenance = keras_rpat.evaluation.provenance(batch_size=distributed_worker.BATCH, sync_batchnorm=True)
    results["provenance"] = np.array(json.dumps(provenance))
    if jax.process_count() > 1:
        results.update(distributed_worker.shared_folders(args.out))
    if job.is_primary:
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
