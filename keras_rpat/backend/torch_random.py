"""Device-side random numbers for the torch backend, without host synchronisation.

One `torch.Generator` per (`keras.random.SeedGenerator`, device), seeded from
the seed the SeedGenerator was made with (its own, or the one it drew from
Keras' global seed state when made); the fast path and the Keras path draw from
the same generators. Keras' own torch random ops re-seed from a host integer on
every call: a device-to-host sync that also breaks CUDA-graph capture. The
state is saved and restored for resumed runs.
"""

import base64
import weakref

import keras
import numpy as np
import torch

from keras_rpat.backend import torch_distributed

# One device-side generator per (SeedGenerator, device), seeded once.
_GENERATORS = weakref.WeakKeyDictionary()


def device_generator(seed, device):
    """The generator of `seed` on `device`, made on first use and seeded from `seed`'s seed."""
    if seed is None:
        return None
    per_device = _GENERATORS.setdefault(seed, {})
    key = str(device)
    if key not in per_device:
        made = torch.Generator(device=device)
        # A SeedGenerator's state is `[seed, draws]`; Keras' random ops advance `draws` only.
        made.manual_seed(int(seed.state.value[0]))
        per_device[key] = made
    return per_device[key]


def keras_device_and_dtype(dtype=None):
    """`(torch.device, torch.dtype)` of the tensors Keras makes now (its device scope; `dtype` standardized)."""
    probe = keras.ops.empty((0,), dtype=dtype)  # no data, no kernel: nothing runs on the device
    device = probe.device
    if device.type == "cuda" and device.index == torch.cuda.current_device():
        # Named as Keras names its default ("cuda": the current device), so that every
        # rank of a data-parallel run keys (and saves) its generators alike.
        device = torch.device(device.type)
    return device, probe.dtype


def _shape(shape):
    return tuple(int(s) for s in shape)


def random_uniform(shape, minval, maxval, dtype, seed):
    device, dtype = keras_device_and_dtype(dtype)
    # In a data-parallel step a per-sample draw is made for the global batch
    # and each rank keeps its rows (see torch_distributed).
    shape, rows = torch_distributed.global_rows(_shape(shape))
    u = torch.rand(shape, generator=device_generator(seed, device), dtype=dtype, device=device)
    u = u if rows is None else u[rows]
    return u * (maxval - minval) + minval


def random_normal(shape, mean, stddev, dtype, seed):
    device, dtype = keras_device_and_dtype(dtype)
    shape, rows = torch_distributed.global_rows(_shape(shape))
    n = torch.randn(shape, generator=device_generator(seed, device), dtype=dtype, device=device)
    n = n if rows is None else n[rows]
    return n * stddev + mean


def random_beta(concentration1, concentration0, dtype, seed):
    # Beta(a, b) = Ga / (Ga + Gb) with unit-scale Gamma draws on the device.
    device, dtype = keras_device_and_dtype(dtype)
    gen = device_generator(seed, device)
    a = torch.full((1,), float(concentration1), dtype=dtype, device=device)
    b = torch.full((1,), float(concentration0), dtype=dtype, device=device)
    ga = torch._standard_gamma(a, generator=gen)
    gb = torch._standard_gamma(b, generator=gen)
    return (ga / (ga + gb)).reshape(())


def get_random_state(seed):
    """JSON-able state of the device generators behind a SeedGenerator."""
    return {
        device: base64.b64encode(bytes(g.get_state().cpu().numpy().tobytes())).decode("ascii")
        for device, g in _GENERATORS.get(seed, {}).items()
    }


def set_random_state(seed, state):
    """Restores what `get_random_state` returned (for resumed runs)."""
    for device, encoded in (state or {}).items():
        raw = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).copy()
        device_generator(seed, device).set_state(torch.from_numpy(raw))


def device_generators(device_type):
    """Every generator made so far on devices of `device_type` (e.g. `"cuda"`)."""
    return [g for per_device in _GENERATORS.values() for d, g in per_device.items() if d.startswith(device_type)]
