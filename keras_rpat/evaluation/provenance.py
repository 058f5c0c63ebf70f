"""What a results file holds besides its numbers: where they come from, and the JSON round trip.

`provenance()` records the versions, backend, device, data-parallel engine,
UTC time and git SHA; `JSONResult` gives the result dataclasses (`EvalResult`,
`PerceptionResult`) `to_dict` / `to_json` / `save` / `load`.
"""

import dataclasses
import datetime
import json
import os
import subprocess

import keras
import numpy as np

from keras_rpat import _io
from keras_rpat import backend as rpat_backend
from keras_rpat._version import __version__


def _package_version(name):
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return None


def _git_sha():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def _device_of(model=None):
    if model is not None:
        try:
            weights = model.weights
            if weights:
                device = weights[0].value.device
                spread = sorted(getattr(device, "device_set", ()), key=str)  # jax: a sharding over devices
                return f"{len(spread)} x {spread[0]}" if len(spread) > 1 else str(spread[0] if spread else device)
        except Exception:
            pass
    try:
        devices = keras.distribution.list_devices()
        return str(devices[0]) if devices else None
    except Exception:
        return None


def provenance(model=None, elapsed=None, batch_size=None, sync_batchnorm=None):
    """Versions, backend, device, data-parallel engine, UTC time and git SHA, for results files.

    Args:
        model: optional model, to report the device its weights live on.
        elapsed: optional wall time in seconds.
        batch_size: optional global training batch, recorded with its
            per-replica share (`per_replica_batch`).
        sync_batchnorm: optional, whether BatchNorm took the global batch's
            statistics (recorded in a data-parallel job).

    Returns:
        A JSON-serialisable dict. `engine` is `"single-process"`, or the
        data-parallel job's: `"torch.distributed"` (with `process_group`,
        `"gloo"` or `"nccl"`), `"tf.distribute.MirroredStrategy"` or
        `"tf.distribute.MultiWorkerMirroredStrategy"` or `"keras.distribution"` (jax);
        `world_size` counts its ranks (torch), replicas in sync (tensorflow) or devices (jax).
    """
    info = {
        "keras_rpat": __version__,
        "keras": keras.__version__,
        "torch": _package_version("torch"),
        "tensorflow": _package_version("tensorflow") or _package_version("tensorflow-cpu"),
        "jax": _package_version("jax"),
        "pyautoattack": _package_version("pyautoattack"),
        "numpy": np.__version__,
        "backend": keras.config.backend(),
        "device": _device_of(model),
        **_data_parallel(model, batch_size, sync_batchnorm),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
    }
    if elapsed is not None:
        info["elapsed_s"] = round(float(elapsed), 3)
    return info


_ENGINES = {
    "mirrored": "tf.distribute.MirroredStrategy",
    "multiworker": "tf.distribute.MultiWorkerMirroredStrategy",
    "keras.distribution": "keras.distribution",  # jax
}


def _data_parallel(model, batch_size, sync_batchnorm):
    """The `engine`, `world_size` (and `per_replica_batch`, `sync_batchnorm`) of `provenance`."""
    job = rpat_backend.distributed_context(model)
    info = {"engine": "single-process", "world_size": 1}
    if job is not None:
        info = {"engine": _ENGINES.get(job.backend, "torch.distributed"), "world_size": int(job.world_size)}
        if info["engine"] == "torch.distributed":
            info["process_group"] = job.backend
    if batch_size is not None:
        info["per_replica_batch"] = int(batch_size) // info["world_size"]
    if sync_batchnorm is not None and job is not None:
        info["sync_batchnorm"] = bool(sync_batchnorm)
    return info


class JSONResult:
    """JSON (de)serialisation of a result dataclass."""

    def to_dict(self):
        """Returns the result as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def to_json(self, indent=2):
        """Returns the result as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path):
        """Writes the result as JSON, atomically (temporary file + `os.replace`)."""
        _io.atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data):
        """Builds a result from `to_dict()` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path):
        """Reads a result written by `save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))
