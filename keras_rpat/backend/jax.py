"""JAX implementations of the backend hooks (see `keras_rpat.backend`).

keras_rpat's attacks and train step read and assign Keras variables; on JAX they run
as pure functions through `jax_state` (nested `keras.StatelessScope`s), and the
train step as one `jax.jit`-compiled function (`jax_engine.JaxEngine`). Many devices
are `keras.distribution`'s (`jax_distributed`).
"""

import contextlib
import importlib.metadata
import os
import random
import warnings
import weakref

import jax
import keras
import numpy as np

from keras_rpat.backend import jax_distributed
from keras_rpat.backend import jax_engine
from keras_rpat.backend import jax_state

# XLA's CPU compiler (seen in jaxlib 0.10.2) hands a maximum followed by a sum (a ReLU before global average pooling)
# to YNNPACK, whose maximum drops NaN: a model with NaN weights gives finite logits and a finite loss, so a
# diverged run trains on unnoticed (`DivergenceGuard`). Reductions then stay in XLA's own NaN-propagating code.
# XLA reads XLA_FLAGS when JAX first compiles, and aborts on a flag it does not know: set for the jaxlib versions
# known to have it (0.10, 0.11; on others the check at the first trainer warns), unless the user chose a YNN
# setting (`keras_rpat.backend` imports this module when Keras loads).
NAN_SAFE_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def _jaxlib_version():
    try:
        return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


_FLAG_KNOWN = (0, 10) <= _jaxlib_version() < (0, 12)
if _FLAG_KNOWN and "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NAN_SAFE_CPU_FLAG}".strip()


def cpu_reductions_keep_nan():
    """Whether a jitted ReLU-then-sum propagates NaN on the default device (`False`: XLA's CPU compiler drops it)."""
    x = np.full((32, 4, 4, 8), np.nan, "float32")  # large enough for XLA to hand the reduction to YNNPACK
    with jax.ensure_compile_time_eval():  # also when asked while tracing a step
        y = jax.jit(lambda x: jax.numpy.sum(jax.numpy.maximum(x, 0.0), axis=(1, 2)))(x)
    return bool(np.isnan(np.asarray(y)).all())


_NAN_CHECKED = []


def _warn_if_nan_vanishes():
    if _NAN_CHECKED or jax.default_backend() != "cpu":
        return
    _NAN_CHECKED.append(True)
    if not cpu_reductions_keep_nan():
        warnings.warn(
            "JAX's CPU compiler drops NaN here (a ReLU before a sum, as in global average pooling): a model whose "
            "weights went NaN reports a finite loss, and the divergence stop can miss it. keras_rpat sets "
            f"XLA_FLAGS={NAN_SAFE_CPU_FLAG} on jaxlib 0.10 and 0.11 unless XLA_FLAGS names YNN fusions; XLA reads it only before JAX "
            "first compiles: set it in the environment, or use keras_rpat before any JAX computation.",
            stacklevel=3,
        )


def input_gradient(loss_fn, x):
    x = jax.lax.stop_gradient(x)
    loss, _, grad = jax_state.value_and_grad(lambda x: (loss_fn(x), None), x)
    return jax.lax.stop_gradient(loss), jax.lax.stop_gradient(grad)


def no_grad():
    # JAX differentiates only what `jax.grad` is given; callers wrap outputs in `stop_gradient`.
    return contextlib.nullcontext()


def loop(num_steps, body, carry):
    return jax_state.fori_loop(num_steps, body, carry)


def assign_moving_average(targets, sources, decay):
    for t, s in zip(targets, sources):
        value = keras.ops.cast(s.value, t.dtype)
        if (isinstance(decay, (int, float)) and decay == 0.0) or "float" not in str(t.dtype):
            t.assign(value)
        else:
            d = decay if isinstance(decay, (int, float)) else keras.ops.cast(decay, t.dtype)  # a tensor decay
            t.assign(d * t.value + (1.0 - d) * value)


def train_engine(trainer):
    _warn_if_nan_vanishes()
    return jax_engine.JaxEngine(trainer)


def initialize_distributed(owner=None, strategy=None):
    return jax_distributed.initialize(strategy, owner)


def distributed_context(owner=None):
    return jax_distributed.context()


def process_count():
    return jax_distributed.process_count()


def map_rows(fn, arrays, owner=None, seed_generators=()):
    # The step's random draws are the global batch's: the one-device rows, with or without a distribution
    # (jax_distributed shards the rows over its devices).
    return jax_distributed.map_rows(lambda *tensors: _rows(fn, tensors, owner, seed_generators), arrays)


def _rows(fn, tensors, owner, seed_generators):
    # `fn.jit_compile = False`: `fn` keeps Python state (its Python would run once per batch shape), run it eagerly.
    if not getattr(fn, "jit_compile", True):
        return tuple(fn(*tensors))
    variables = _row_state(owner, seed_generators)
    # `fn.jit_key`: the `fn`s of `owner` with one key compute the same function of their variables' values
    # (e.g. one attack's, made anew for each evaluation): they share one compiled function.
    key = getattr(fn, "jit_key", None)
    holder, key = (fn, None) if key is None or owner is None else (owner, (key, len(variables)))
    compiled = _COMPILED_ROWS.setdefault(holder, {}).setdefault(key, _CompiledRows())
    return compiled(fn, variables, tensors)


# `map_rows`' compiled functions: per `owner` and `fn.jit_key`, else per `fn`. (An evaluation loop makes
# its `fn` once and maps every batch; an evaluation each epoch makes it anew.)
_COMPILED_ROWS = weakref.WeakKeyDictionary()


def _row_state(owner, seed_generators):
    """The variables `map_rows`' `fn` reads: `owner`'s (a model's weights, its layers' random
    streams) and the states of `seed_generators`, each once."""
    variables = list(getattr(owner, "variables", ())) + [g.state for g in seed_generators]
    return list({id(v): v for v in variables}.values())


class _CompiledRows:
    """`fn(*tensors)` as one `jax.jit`-compiled pure function of its variables' values, traced
    anew for each new batch shape: `fn` reads them in a `jax_state.RecordingScope` and its
    assignments (the attacks' random streams) are made to the variables after each call, so the
    streams advance as in an eager call. It keeps no reference to `fn` or its variables between
    calls (`_COMPILED_ROWS` holds it by its owner, weakly)."""

    def __init__(self):
        self.current = None  # `(fn, variables)` of the call in progress
        self.compiled = jax.jit(self.pure)

    def pure(self, values, *tensors):
        fn, variables = self.current
        with jax_state.RecordingScope(list(zip(variables, values))) as scope:
            outputs = tuple(fn(*tensors))
        known = {id(v) for v in variables}
        unknown = [v.path for key, v in scope.assigned.items() if key not in known]
        if unknown:
            raise ValueError(
                f"map_rows: `fn` assigned variables that are not part of its state: {unknown}. "
                "Pass the model that owns them as `owner`, or their SeedGenerators as `seed_generators`."
            )
        return outputs, {i: scope.get_current_value(v) for i, v in enumerate(variables) if id(v) in scope.assigned}

    def __call__(self, fn, variables, tensors):
        self.current = (fn, variables)
        try:
            outputs, assigned = self.compiled([v.value for v in variables], *tensors)
        finally:
            self.current = None
        jax_state.assign([(variables[i], value) for i, value in assigned.items()])
        return outputs


def all_gather_object(value):
    return jax_distributed.all_gather_object(value)


def from_primary(value):
    return jax_distributed.from_primary(value)


def worker_failure(error):
    return None


@contextlib.contextmanager
def replica_share(x):
    # A jitted step over a keras.distribution computes on the global batch: the one-device step.
    yield 1.0


def synchronized_moments(x, axes):
    # The global batch is one array (sharded by keras.distribution): BatchNorm's own moments are global.
    return None


def random_uniform(shape, minval, maxval, dtype, seed):
    return keras.random.uniform(shape, minval=minval, maxval=maxval, dtype=dtype, seed=seed)


def random_normal(shape, mean, stddev, dtype, seed):
    return keras.random.normal(shape, mean=mean, stddev=stddev, dtype=dtype, seed=seed)


def random_beta(concentration1, concentration0, dtype, seed):
    return keras.random.beta((), concentration1, concentration0, dtype=dtype, seed=seed)


def set_random_seed(seed):
    # JAX draws only from keras.random SeedGenerators (seeded from Python's `random` when made with
    # `seed=None`); TensorFlow, which `keras.utils.set_random_seed` imports when installed, is not used.
    random.seed(seed)
    np.random.seed(seed)


def device_name():
    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else f"{device.platform}:{device.id} ({device.device_kind})"
