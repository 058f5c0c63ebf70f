"""Tests for `keras_rpat.optimizers`: torch-style SGD and the LR schedules.

The references are computed independently of the code under test:
`torch.optim.SGD` / `torch.optim.lr_scheduler.MultiStepLR` (torch is
importable in the tests under both backends) and the rules of
docs/algorithms.md#lr-schedules written out in plain Python.
"""

import contextlib
import json

import keras_rpat  # noqa: F401  (sets the default backend before keras)

import keras
import numpy as np
import pytest
import torch

from keras_rpat.optimizers import SGD
from keras_rpat.optimizers import MultiStepDecay
from keras_rpat.optimizers import PiecewiseDecay
from keras_rpat.optimizers import bench_milestones
from keras_rpat.optimizers import scale_epoch
from keras_rpat.optimizers import scale_milestones

from testing import BACKEND  # noqa: E402
from testing import float64_precision  # noqa: E402

SHAPES = [(3, 4), (4,), (2, 3, 3), (1,)]
NUM_STEPS = 5


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _assert_close(actual, expected, tol=1e-6):
    """Relative error (max abs difference / max abs value) <= tol."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected)), 1e-12)
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= tol, f"relative error {error:.3g} > {tol:.3g}"


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    grads = [[rng.standard_normal(s).astype("float32") for s in SHAPES] for _ in range(NUM_STEPS)]
    return initial, grads


def _run_keras(optimizer, initial, grads, names=None):
    names = names or [f"v{i}" for i in range(len(initial))]
    variables = [keras.Variable(x, name=n) for x, n in zip(initial, names)]
    for step_grads in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
    return [_numpy(v) for v in variables]


def _run_torch(initial, grads, lrs, decay_mask=None, **hyper):
    params = [torch.nn.Parameter(torch.tensor(x)) for x in initial]
    if decay_mask is None:
        groups = [{"params": params}]
    else:
        groups = [
            {"params": [p for p, m in zip(params, decay_mask) if m]},
            {
                "params": [p for p, m in zip(params, decay_mask) if not m],
                "weight_decay": 0.0,
            },
        ]
    optimizer = torch.optim.SGD(groups, lr=lrs[0], **hyper)
    for lr, step_grads in zip(lrs, grads):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        optimizer.step()
    return [p.detach().numpy() for p in params]


HYPERPARAMETERS = [
    # (momentum, weight_decay, nesterov, dampening)
    (0.9, 5e-4, False, 0.0),  # the paper's default
    (0.9, 5e-4, True, 0.0),
    (0.9, 1e-2, False, 0.5),  # dampening: torch clones `d` on step 1
    (0.5, 0.0, True, 0.0),
    (0.0, 5e-4, False, 0.0),
    (0.0, 0.0, False, 0.3),  # dampening ignored without momentum
    (0.8, 0.1, False, 1.0),
]

# torch-only: the `_foreach` fast path and the per-variable path.
PATHS = [True, False] if BACKEND == "torch" else [False]


@pytest.mark.parametrize("use_foreach", PATHS, ids=lambda f: f"foreach={f}")
@pytest.mark.parametrize("momentum,weight_decay,nesterov,dampening", HYPERPARAMETERS)
def test_sgd_matches_torch(momentum, weight_decay, nesterov, dampening, use_foreach):
    initial, grads = _problem()
    hyper = dict(
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        dampening=dampening,
    )
    optimizer = SGD(0.1, **hyper)
    optimizer._use_foreach = use_foreach
    actual = _run_keras(optimizer, initial, grads)
    expected = _run_torch(initial, grads, [0.1] * NUM_STEPS, **hyper)
    for a, e in zip(actual, expected):
        _assert_close(a, e)


def test_sgd_defaults_are_the_papers():
    optimizer = SGD()
    assert optimizer.momentum == 0.9
    assert optimizer.weight_decay == 5e-4
    assert optimizer.nesterov is False
    assert optimizer.dampening == 0.0
    np.testing.assert_allclose(_numpy(optimizer.learning_rate), 0.1)
    initial, grads = _problem(seed=1)
    actual = _run_keras(optimizer, initial, grads)
    expected = _run_torch(initial, grads, [0.1] * NUM_STEPS, momentum=0.9, weight_decay=5e-4)
    for a, e in zip(actual, expected):
        _assert_close(a, e)


@pytest.mark.parametrize("use_foreach", PATHS, ids=lambda f: f"foreach={f}")
@pytest.mark.parametrize(
    "schedule,lrs",
    [
        (
            MultiStepDecay(0.1, milestones=[1, 2], steps_per_epoch=2),
            [0.1, 0.1, 0.01, 0.01, 0.001],
        ),
        (
            PiecewiseDecay(0.1, steps_per_epoch=2, milestones=(1, 2)),
            [0.1, 0.1 / 1.5, 0.1 / 1.5, 0.1 / 1.5**2, 0.1 / 1.5**2],
        ),
    ],
    ids=["multistep", "piecewise"],
)
def test_sgd_with_schedule_matches_torch(schedule, lrs, use_foreach):
    initial, grads = _problem(seed=2)
    optimizer = SGD(schedule, momentum=0.9, weight_decay=5e-4, dampening=0.1)
    optimizer._use_foreach = use_foreach
    actual = _run_keras(optimizer, initial, grads)
    expected = _run_torch(initial, grads, lrs, momentum=0.9, weight_decay=5e-4, dampening=0.1)
    for a, e in zip(actual, expected):
        _assert_close(a, e)


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path only")
def test_foreach_path_equals_per_variable_path():
    initial, grads = _problem(seed=3)
    results = []
    for use_foreach in (True, False):
        optimizer = SGD(0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
        optimizer._use_foreach = use_foreach
        results.append(_run_keras(optimizer, initial, grads))
    for a, b in zip(*results):
        _assert_close(a, b, tol=1e-7)


@pytest.mark.parametrize("use_foreach", PATHS, ids=lambda f: f"foreach={f}")
def test_exclude_from_weight_decay(use_foreach):
    initial, grads = _problem(seed=4)
    names = ["kernel", "bias", "gamma", "beta"]
    optimizer = SGD(0.1, momentum=0.9, weight_decay=0.05)
    optimizer._use_foreach = use_foreach
    optimizer.exclude_from_weight_decay(var_names=["bias", "beta"])
    actual = _run_keras(optimizer, initial, grads, names=names)
    expected = _run_torch(
        initial,
        grads,
        [0.1] * NUM_STEPS,
        decay_mask=[True, False, True, False],
        momentum=0.9,
        weight_decay=0.05,
    )
    for a, e in zip(actual, expected):
        _assert_close(a, e)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        optimizer.exclude_from_weight_decay(var_names=["kernel"])


def test_weight_decay_is_not_keras_decoupled_decay():
    # A zero gradient with no momentum: torch-style decay moves theta by
    # lr * wd * theta exactly once (Keras' decoupled decay would add a second
    # term of the same size).
    variable = keras.Variable(np.full((2,), 2.0, "float32"))
    optimizer = SGD(0.5, momentum=0.0, weight_decay=0.1)
    optimizer.apply([keras.ops.zeros((2,))], [variable])
    np.testing.assert_allclose(_numpy(variable), 2.0 - 0.5 * 0.1 * 2.0)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile check")
@pytest.mark.parametrize("use_foreach", [True, False])
def test_update_traces_as_one_graph_on_torch(use_foreach):
    # fullgraph=True fails on any graph break: host syncs or Python branches
    # on tensor values inside the update.
    schedule = MultiStepDecay(0.1, milestones=[1], steps_per_epoch=2)
    initial, grads = _problem(seed=5)
    results = []
    for compiled in (True, False):
        optimizer = SGD(schedule, momentum=0.9, dampening=0.5)
        optimizer._use_foreach = use_foreach
        variables = [keras.Variable(x) for x in initial]
        optimizer.build(variables)

        def update(step_grads):
            optimizer._backend_update_step(step_grads, variables, optimizer.learning_rate)

        if compiled:
            update = torch.compile(update, fullgraph=True, backend="eager")
        for step_grads in grads[:3]:
            update([torch.tensor(g) for g in step_grads])
            optimizer.iterations.assign_add(1)
        results.append([_numpy(v) for v in variables])
    for a, b in zip(*results):
        _assert_close(a, b, tol=1e-7)


def _dense_problem():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 4)).astype("float32")
    y = rng.standard_normal((8, 3)).astype("float32")
    kernel = rng.standard_normal((4, 3)).astype("float32") * 0.5
    bias = rng.standard_normal((3,)).astype("float32") * 0.1
    return x, y, kernel, bias


def _dense_model(kernel, bias):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.set_weights([kernel, bias])
    return model


@pytest.mark.parametrize(
    "learning_rate,lrs",
    [
        (0.1, [0.1, 0.1]),
        (MultiStepDecay(0.1, milestones=[1], steps_per_epoch=1), [0.1, 0.01]),
    ],
    ids=["float", "schedule"],
)
def test_fit_matches_torch(learning_rate, lrs):
    x, y, kernel, bias = _dense_problem()
    model = _dense_model(kernel, bias)
    # On tensorflow the whole step is XLA-compiled: a check that the update is
    # traceable (torch.compile on CPU is too slow for a unit test).
    model.compile(
        optimizer=SGD(learning_rate, momentum=0.9, weight_decay=5e-4),
        loss="mse",
        jit_compile=BACKEND == "tensorflow",
    )
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert int(_numpy(model.optimizer.iterations)) == 2

    linear = torch.nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(kernel.T))
        linear.bias.copy_(torch.tensor(bias))
    reference = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step, lr in enumerate(lrs):
        for group in reference.param_groups:
            group["lr"] = lr
        xb = torch.tensor(x[4 * step : 4 * step + 4])
        yb = torch.tensor(y[4 * step : 4 * step + 4])
        reference.zero_grad()
        torch.nn.functional.mse_loss(linear(xb), yb).backward()
        reference.step()
    new_kernel, new_bias = model.get_weights()
    _assert_close(new_kernel, linear.weight.detach().numpy().T)
    _assert_close(new_bias, linear.bias.detach().numpy())


# ---------------------------------------------------------------- schedules


def test_multistep_bench_110_epochs_boundaries():
    n = 391
    schedule = MultiStepDecay(0.1, bench_milestones(110), steps_per_epoch=n)
    # docs/algorithms.md#lr-schedules: 0.1 for 1-based epochs 1-100, 0.01 for 101-105, 0.001
    # for 106-110; the first batch of an epoch has 0-based step (epoch-1)*n.
    for step, lr in [
        (0, 0.1),
        (n * 100 - 1, 0.1),  # last batch of epoch 100
        (n * 100, 0.01),  # first batch of epoch 101
        (n * 105 - 1, 0.01),
        (n * 105, 0.001),
        (n * 110 - 1, 0.001),
    ]:
        np.testing.assert_allclose(_numpy(schedule(step)), lr, rtol=1e-6)

    steps = np.arange(110 * n)
    epoch = steps // n + 1  # 1-based, as in the reference code's loop
    expected = np.where(epoch <= 100, 0.1, np.where(epoch <= 105, 0.01, 0.001))
    np.testing.assert_allclose(_numpy(schedule(steps)), expected, rtol=1e-6)


def test_multistep_bench_200_epochs():
    n = 391
    schedule = MultiStepDecay(0.1, bench_milestones(200), steps_per_epoch=n)
    steps = np.arange(200 * n)
    epoch = steps // n + 1
    expected = np.where(epoch <= 100, 0.1, np.where(epoch <= 150, 0.01, 0.001))
    np.testing.assert_allclose(_numpy(schedule(steps)), expected, rtol=1e-6)


@pytest.mark.parametrize("milestones,gamma", [([2, 5], 0.1), ([3, 3, 7], 0.5), ([0, 4], 0.2)])
def test_multistep_matches_torch_multisteplr(milestones, gamma):
    n, epochs = 3, 9
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
    expected = []
    for _ in range(epochs):  # stepped once per epoch, as in the Bench code
        expected += [optimizer.param_groups[0]["lr"]] * n
        optimizer.step()
        scheduler.step()
    schedule = MultiStepDecay(0.1, milestones, steps_per_epoch=n, gamma=gamma)
    actual = _numpy(schedule(np.arange(epochs * n)))
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


@pytest.mark.parametrize("floatx", ["float32", "float64"])
def test_multistep_is_exact_at_the_boundaries(floatx):
    """Around every milestone the value is MultiStepLR's sequential product, exactly, in `floatx`.

    Why MultiStepDecay is not Keras' `PiecewiseConstantDecay`: that one switches on `step > boundary`
    (here `step >= milestone * steps_per_epoch`) and, on tensorflow under float64, gives float32 values.
    """
    n, milestones, gamma = 391, [0, 100, 100, 105], 0.1
    products = [0.1]
    for _ in milestones:
        products.append(products[-1] * gamma)
    with float64_precision() if floatx == "float64" else contextlib.nullcontext():
        schedule = MultiStepDecay(0.1, milestones, steps_per_epoch=n, gamma=gamma)
        for step in sorted({s for m in milestones for s in (m * n - 1, m * n, m * n + 1) if s >= 0}):
            expected = np.asarray(products[sum(step >= m * n for m in milestones)], dtype=floatx)
            for step_dtype in ("int32", "int64"):
                actual = _numpy(schedule(keras.ops.convert_to_tensor(step, step_dtype)))
                assert actual.dtype == expected.dtype and actual == expected, (step, step_dtype, actual, expected)


def _sotas_lr(epoch, i, n, lr_max=0.1, factor=1.5, milestones=(100, 150)):
    # docs/algorithms.md#lr-schedules, SOTAs train_cifar_*.py: t = epoch + (i + 1) / N.
    t = epoch + (i + 1) / n
    if t < milestones[0]:
        return lr_max
    if t < milestones[1]:
        return lr_max / factor
    return lr_max / factor**2


def test_piecewise_sotas_boundaries():
    n = 391
    schedule = PiecewiseDecay(0.1, steps_per_epoch=n)
    assert schedule.milestones == [100, 150] and schedule.factor == 1.5
    for epoch, i, lr in [
        (0, 0, 0.1),
        (99, n - 2, 0.1),
        (99, n - 1, 0.1 / 1.5),  # last iteration of epoch 99: decayed
        (100, 0, 0.1 / 1.5),
        (149, n - 2, 0.1 / 1.5),
        (149, n - 1, 0.1 / 1.5**2),
        (199, n - 1, 0.1 / 1.5**2),
    ]:
        step = epoch * n + i
        assert _sotas_lr(epoch, i, n) == lr
        np.testing.assert_allclose(_numpy(schedule(step)), lr, rtol=1e-6)

    expected = [_sotas_lr(e, i, n) for e in range(200) for i in range(n)]
    actual = _numpy(schedule(np.arange(200 * n)))
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_piecewise_other_settings():
    n = 7
    schedule = PiecewiseDecay(0.2, steps_per_epoch=n, milestones=(2.5, 4), factor=4.0)
    expected = [_sotas_lr(e, i, n, lr_max=0.2, factor=4.0, milestones=(2.5, 4)) for e in range(6) for i in range(n)]
    np.testing.assert_allclose(_numpy(schedule(np.arange(6 * n))), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "schedule",
    [
        MultiStepDecay(0.1, [100, 105], steps_per_epoch=391),
        PiecewiseDecay(0.1, steps_per_epoch=391),
    ],
    ids=["multistep", "piecewise"],
)
def test_schedules_are_traceable(schedule):
    # Symbolic tensors raise on any Python branch on their value.
    out = schedule(keras.KerasTensor((), dtype="int64"))
    assert isinstance(out, keras.KerasTensor)
    assert out.shape == ()
    assert out.dtype == keras.config.floatx()


def test_bench_and_scaled_milestones():
    assert bench_milestones(110) == [100, 105]
    assert bench_milestones(10) == [100, 105]
    assert bench_milestones(200) == [100, 150]
    assert bench_milestones(300) == [150, 225]
    assert scale_milestones([100, 150], 20, 200) == [10, 15]
    # Ties go to the earlier epoch (keras_rpat.optimizers.scale_epoch): 10.5 -> 10, 1.5 -> 1.
    # Until issue 9 the helper rounded halves up ([10, 11] and [1, 2]) while
    # Preset.with_epochs used round(); there is one rule now.
    assert scale_milestones([100, 105], 11, 110) == [10, 10]
    assert scale_milestones([100, 105], 110, 110) == [100, 105]
    assert scale_milestones([100, 150], 2, 200) == [1, 1]


@pytest.mark.parametrize(
    "epoch, epochs, reference, expected",
    [
        (105, 11, 110, 10),
        (115, 11, 110, 11),
        (100, 11, 110, 10),
        (105, 20, 200, 10),
        (150, 3, 200, 2),
        (1, 3, 6, 0),
        (0, 5, 110, 0),
    ],
)
def test_scale_epoch_rounds_to_nearest_with_ties_to_the_earlier_epoch(epoch, epochs, reference, expected):
    assert scale_epoch(epoch, epochs, reference) == expected


def test_presets_and_scale_milestones_agree_on_the_11_epoch_schedule():
    from keras_rpat import presets

    preset = presets.get("pgd_at").with_epochs(11)
    assert preset.milestones == (10, 10) == tuple(scale_milestones([100, 105], 11, 110))


# ------------------------------------------------------------ serialization


@pytest.mark.parametrize(
    "learning_rate",
    [
        0.05,
        MultiStepDecay(0.1, [100, 105], steps_per_epoch=391, gamma=0.2),
        PiecewiseDecay(0.1, steps_per_epoch=100, milestones=(10, 15), factor=4),
    ],
    ids=["float", "multistep", "piecewise"],
)
def test_sgd_serialization_round_trip(learning_rate):
    optimizer = SGD(learning_rate, momentum=0.8, weight_decay=1e-3, nesterov=True)
    config = keras.saving.serialize_keras_object(optimizer)
    config = json.loads(json.dumps(config))
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is SGD
    assert restored.get_config() == optimizer.get_config()
    assert restored.momentum == 0.8
    assert restored.weight_decay == 1e-3
    assert restored.nesterov is True
    assert restored.dampening == 0.0
    if isinstance(learning_rate, float):
        np.testing.assert_allclose(_numpy(restored.learning_rate), learning_rate, rtol=1e-7)
    else:
        assert type(restored._learning_rate) is type(learning_rate)
        steps = np.array([0, 391 * 10, 391 * 15, 391 * 100, 391 * 105])
        np.testing.assert_array_equal(
            _numpy(restored._learning_rate(steps)),
            _numpy(learning_rate(steps)),
        )
    clone = SGD.from_config(optimizer.get_config())
    assert clone.get_config() == optimizer.get_config()


@pytest.mark.parametrize(
    "schedule",
    [
        MultiStepDecay(0.1, [3, 5], steps_per_epoch=7, gamma=0.5),
        PiecewiseDecay(0.2, steps_per_epoch=7, milestones=(2.5, 4), factor=2),
    ],
    ids=["multistep", "piecewise"],
)
def test_schedule_serialization_round_trip(schedule):
    config = keras.optimizers.schedules.serialize(schedule)
    config = json.loads(json.dumps(config))
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    steps = np.arange(50)
    np.testing.assert_array_equal(_numpy(restored(steps)), _numpy(schedule(steps)))


def test_saved_model_keeps_optimizer_state(tmp_path):
    x, y, kernel, bias = _dense_problem()
    model = _dense_model(kernel, bias)
    schedule = MultiStepDecay(0.1, milestones=[1], steps_per_epoch=1)
    model.compile(optimizer=SGD(schedule, dampening=0.25), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.optimizer) is SGD
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=-0.1), r"`learning_rate` must be >= 0\. Received"),
        (
            dict(momentum=1.5),
            r"`momentum` must be in \[0, 1\)\. Received: momentum=1\.5",
        ),
        (dict(momentum=1.0), r"`momentum` must be in \[0, 1\)"),
        (dict(momentum=-0.1), r"`momentum` must be in \[0, 1\)"),
        (dict(weight_decay=-1e-4), r"`weight_decay` must be a float >= 0"),
        (dict(dampening=1.5), r"`dampening` must be in \[0, 1\]"),
        (dict(momentum=0.0, nesterov=True), r"Nesterov momentum requires"),
        (dict(dampening=0.1, nesterov=True), r"Nesterov momentum requires"),
        (dict(nesterov="yes"), r"`nesterov` must be a bool"),
    ],
)
def test_sgd_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(**kwargs)


NON_EMPTY = "`milestones` must be a non-empty"


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: MultiStepDecay(0.1, [], 391), NON_EMPTY),
        (lambda: MultiStepDecay(0.1, [105, 100], 391), "sorted"),
        (lambda: MultiStepDecay(0.1, [100.5], 391), "integers"),
        (lambda: MultiStepDecay(0.1, [-1], 391), NON_EMPTY),
        (
            lambda: MultiStepDecay(0.1, [100], 0),
            "`steps_per_epoch` must be an integer > 0",
        ),
        (lambda: MultiStepDecay(0.1, [100], -391), "`steps_per_epoch`"),
        (lambda: MultiStepDecay(0.1, [100], 391.0), "`steps_per_epoch`"),
        (
            lambda: MultiStepDecay(-0.1, [100], 391),
            "`initial_learning_rate` must be",
        ),
        (lambda: MultiStepDecay(0.1, [100], 391, gamma=0), "`gamma` must be"),
        (lambda: PiecewiseDecay(0.1, 391, milestones=[]), NON_EMPTY),
        (lambda: PiecewiseDecay(0.1, 391, milestones=(150, 100)), "sorted"),
        (lambda: PiecewiseDecay(0.1, steps_per_epoch=0), "`steps_per_epoch`"),
        (lambda: PiecewiseDecay(0.1, 391, factor=0.0), "`factor` must be"),
        (lambda: PiecewiseDecay(-1.0, 391), "`initial_learning_rate`"),
        (lambda: bench_milestones(0), "`epochs` must be"),
        (lambda: scale_milestones([100], 0, 110), "`epochs` must be"),
        (lambda: scale_milestones([100], 10, 0), "`reference_epochs` must be"),
        (lambda: scale_milestones([100, 50], 10, 110), "sorted"),
    ],
)
def test_schedule_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
