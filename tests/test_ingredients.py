"""The leaderboard's training ingredients (docs/guides/leaderboard.md), each against its formula.

Label smoothing, the cosine schedule with warm-up, Nesterov momentum, no weight
decay on BatchNorm and bias variables and the dynamic-decay EMA, as Wang et al.
2023 (github.com/wzekai99/DM-Improves-AT) train. The expected values are
computed here, independently: PyTorch (`F.cross_entropy(label_smoothing=...)`,
`OneCycleLR`, `torch.optim.SGD` with parameter groups; torch is importable in
the tests under both backends) and NumPy formulas written out from the
reference code.
"""

import math

import keras_rpat  # noqa: F401  (sets the default backend before keras)

import keras
import numpy as np
import pytest
import torch

from keras_rpat import layers
from keras_rpat import losses
from keras_rpat import method_presets
from keras_rpat import presets
from keras_rpat import recipes
from keras_rpat.cli import train as cli_train
from keras_rpat.optimizers import SGD
from keras_rpat.optimizers import WarmupCosineDecay
from keras_rpat.recipes import build
from keras_rpat.trainer import RPATTrainer
from keras_rpat.weight_averaging import WeightAveraging
from testing import BACKEND
from testing import float64_precision
from testing import invoke
from testing import np_ce
from testing import np_log_softmax
from testing import to_np


def _logits(batch=6, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    z = (3 * rng.standard_normal((batch, num_classes))).astype("float32")
    y = rng.integers(0, num_classes, size=(batch,))
    soft = rng.dirichlet(np.ones(num_classes), size=batch).astype("float32")
    return z, y, soft


# ------------------------------------------------------------ label smoothing


def _np_smoothed_ce(y, z, eps):
    """Cross-entropy against `(1 - eps) * target + eps / C`, written out."""
    num_classes = z.shape[-1]
    target = np.eye(num_classes)[y] if np.ndim(y) == 1 else np.asarray(y, np.float64)
    target = (1 - eps) * target + eps / num_classes
    return -np.sum(target * np_log_softmax(z), axis=-1)


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft_labels"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_matches_torch_and_numpy(eps, soft):
    z, y, soft_y = _logits()
    labels = soft_y if soft else y
    actual = to_np(
        losses.smoothed_cross_entropy(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(z), eps)
    )
    target = torch.tensor(soft_y) if soft else torch.tensor(y)
    expected_torch = torch.nn.functional.cross_entropy(
        torch.tensor(z, dtype=torch.float64),
        target.double() if soft else target,
        label_smoothing=eps,
        reduction="none",
    ).numpy()
    np.testing.assert_allclose(actual, expected_torch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(actual, _np_smoothed_ce(labels, z, eps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, view",
    [
        (lambda eps: losses.CrossEntropy(view="clean", label_smoothing=eps), "clean"),
        (lambda eps: losses.AdversarialCrossEntropy(label_smoothing=eps), "adv"),
        (lambda eps: losses.TRADES(beta=6.0, label_smoothing=eps), "clean"),  # the clean CE only
        (lambda eps: losses.MART(beta=6.0, label_smoothing=eps), "adv"),  # the CE on x' only
    ],
    ids=["ce", "adv_ce", "trades", "mart"],
)
def test_label_smoothing_changes_only_the_cross_entropy_term(make, view):
    # loss(eps) - loss(0) = eps * mean_i [mean_c(-log p_ic) - CE_i] of the smoothed view: the other terms
    # (TRADES' KL, MART's margin and KL) are the same with and without smoothing.
    z = {name: _logits(seed=seed)[0] for seed, name in enumerate(("clean", "adv", "clean_kl"))}
    y = _logits()[1]
    views = {k: keras.ops.convert_to_tensor(v) for k, v in z.items()}
    eps = 0.1
    with_smoothing = float(to_np(make(eps)(keras.ops.convert_to_tensor(y), views)))
    without = float(to_np(make(0.0)(keras.ops.convert_to_tensor(y), views)))
    uniform = -np.mean(np_log_softmax(z[view]), axis=-1)
    expected = eps * np.mean(uniform - np_ce(y, z[view]))
    np.testing.assert_allclose(with_smoothing - without, expected, rtol=1e-4, atol=1e-6)
    assert make(eps).get_config()["label_smoothing"] == eps
    assert type(make(eps)).from_config(make(eps).get_config()).label_smoothing == eps
    assert "label_smoothing" not in make(0.0).get_config()  # the config it always had


@pytest.mark.parametrize("value", [-0.1, 1.0, "x", True])
def test_label_smoothing_bad_values(value):
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.CrossEntropy(label_smoothing=value)


# ------------------------------------------------------ cosine schedule


def _torch_one_cycle_lrs(max_lr, epochs, pct_start):
    """The learning rate of each (0-based) epoch of Wang et al. 2023's `cosinew` scheduler, stepped per epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=max_lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, pct_start=pct_start, total_steps=epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("epochs", [400, 110, 10, 3])
def test_cosine_schedule_matches_torch_one_cycle_per_epoch(epochs):
    steps_per_epoch = 7
    schedule = WarmupCosineDecay(0.2, epochs=epochs, steps_per_epoch=steps_per_epoch)
    expected = _torch_one_cycle_lrs(0.2, epochs, 0.025)
    steps = np.arange(epochs * steps_per_epoch)
    actual = to_np(schedule(keras.ops.convert_to_tensor(steps)))
    np.testing.assert_allclose(actual, np.repeat(expected, steps_per_epoch), rtol=2e-6, atol=1e-12)
    if epochs == 400:  # warm-up over the 0-based epochs 0-9 from 0.2 / 25, then down to 0.2 / 25 / 1e4
        np.testing.assert_allclose(actual[[0, 9 * 7, 399 * 7]], [0.2 / 25, 0.2, 0.2 / 25 / 1e4], rtol=1e-6)


def test_cosine_schedule_linear_warmup_per_step_matches_its_formula():
    epochs, steps_per_epoch, fraction = 4, 5, 0.25
    schedule = WarmupCosineDecay(
        0.1, epochs, steps_per_epoch, warmup_fraction=fraction, warmup="linear", per_epoch=False
    )
    total = epochs * steps_per_epoch
    warmup_end = fraction * total - 1  # 4: the warm-up ends at step 4
    start, final = 0.1 / 25, 0.1 / 25 / 1e4
    expected = []
    for step in range(total + 3):  # past the end: stays at the final rate
        if step <= warmup_end:
            expected.append(start + (0.1 - start) * step / warmup_end)
        else:
            p = min((step - warmup_end) / (total - 1 - warmup_end), 1.0)
            expected.append(final + (0.1 - final) * (1 + math.cos(math.pi * p)) / 2)
    actual = to_np(schedule(keras.ops.convert_to_tensor(np.arange(total + 3))))
    np.testing.assert_allclose(actual, expected, rtol=2e-6)


def test_cosine_schedule_warmup_of_one_epoch_starts_at_the_peak():
    # 40 epochs at 2.5 %: OneCycleLR's warm-up ends at epoch 0 (it divides by zero there).
    schedule = WarmupCosineDecay(0.2, epochs=40, steps_per_epoch=3)
    np.testing.assert_allclose(to_np(schedule(0)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(
        to_np(schedule(3)), 0.2 / 25 / 1e4 + (0.2 - 0.2 / 25 / 1e4) * (1 + math.cos(math.pi / 39)) / 2, rtol=1e-6
    )


def test_cosine_schedule_serializes_and_traces():
    schedule = WarmupCosineDecay(0.3, 20, 11, warmup_fraction=0.1, warmup="linear", per_epoch=False)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineDecay) and restored.get_config() == schedule.get_config()
    restored = SGD.from_config(SGD(schedule).get_config())
    assert restored.get_config()["learning_rate"]["config"] == schedule.get_config()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        traced = tf.function(schedule, jit_compile=True)
        np.testing.assert_allclose(to_np(traced(tf.constant(37))), to_np(schedule(37)), rtol=1e-6)
    elif BACKEND == "jax":
        import jax

        np.testing.assert_allclose(to_np(jax.jit(schedule)(jax.numpy.asarray(37))), to_np(schedule(37)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_learning_rate=-1.0), "max_learning_rate"),
        (dict(epochs=0), "epochs"),
        (dict(steps_per_epoch=0), "steps_per_epoch"),
        (dict(warmup_fraction=1.0), "warmup_fraction"),
        (dict(warmup="step"), "warmup"),
        (dict(div_factor=0.5), "div_factor"),
        (dict(per_epoch=1), "per_epoch"),
    ],
)
def test_cosine_schedule_bad_arguments(kwargs, match):
    args = dict(max_learning_rate=0.1, epochs=10, steps_per_epoch=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        WarmupCosineDecay(**args)


# ------------------------------------------- Nesterov, weight-decay exclusion

NAMES = ["kernel", "bias", "gamma", "beta", "kernel"]
SHAPES = [(3, 4), (4,), (4,), (4,), (2, 2, 1, 3)]
PATHS = [True, False] if BACKEND == "torch" else [False]


def _run_float64(optimizer, steps=4, seed=0):
    """Keras float64 variables named as a layer's, `steps` updates; and the same with torch.optim.SGD."""
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]
    variables = [keras.Variable(x, dtype="float64", name=n) for x, n in zip(initial, NAMES)]
    for step_grads in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g, dtype="float64") for g in step_grads], variables)
    return [to_np(v) for v in variables], initial, grads


def _torch_sgd(initial, grads, lrs, no_decay=(), **hyper):
    params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in initial]
    groups = [
        {"params": [p for i, p in enumerate(params) if i not in no_decay]},
        {"params": [p for i, p in enumerate(params) if i in no_decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=lrs[0], **hyper)
    for lr, step_grads in zip(lrs, grads):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("use_foreach", PATHS, ids=lambda f: f"foreach={f}")
@pytest.mark.parametrize(
    "exclude, no_decay",
    [(None, ()), ("batchnorm", (2, 3)), ("batchnorm_and_bias", (1, 2, 3))],
    ids=["decay_all", "batchnorm", "batchnorm_and_bias"],
)
def test_nesterov_and_weight_decay_exclusion_match_torch_in_float64(exclude, no_decay, use_foreach):
    # torch.optim.SGD(nesterov=True) with a weight_decay=0 group for the excluded variables, on the
    # per-step cosine schedule: equal to 1e-12 in float64.
    with float64_precision():
        schedule = WarmupCosineDecay(0.3, epochs=2, steps_per_epoch=2, warmup_fraction=0.5, per_epoch=False)
        optimizer = SGD(schedule, momentum=0.9, weight_decay=0.05, nesterov=True, weight_decay_exclude=exclude)
        optimizer._use_foreach = use_foreach
        actual, initial, grads = _run_float64(optimizer)
        lrs = [float(to_np(schedule(step))) for step in range(len(grads))]
    assert lrs[0] < lrs[1] and lrs[3] < lrs[1]  # warm-up, then decay
    expected = _torch_sgd(initial, grads, lrs, no_decay, momentum=0.9, weight_decay=0.05, nesterov=True)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_weight_decay_exclusion_on_a_model_leaves_batchnorm_and_biases_alone():
    # Zero gradients, no momentum: a decayed variable moves by -lr * wd * theta, an excluded one stays.
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = layers.BatchNorm(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))
    for variable in model.trainable_variables:
        variable.assign(keras.ops.ones(variable.shape))
    for exclude, kept in [("batchnorm", {"gamma", "beta"}), ("batchnorm_and_bias", {"gamma", "beta", "bias"})]:
        optimizer = SGD(0.5, momentum=0.0, weight_decay=0.1, weight_decay_exclude=exclude)
        before = [to_np(v) for v in model.trainable_variables]
        optimizer.apply([keras.ops.zeros(v.shape) for v in model.trainable_variables], model.trainable_variables)
        for variable, old in zip(model.trainable_variables, before):
            factor = 1.0 if variable.name in kept else 1 - 0.5 * 0.1
            np.testing.assert_allclose(to_np(variable), old * factor, rtol=1e-7, err_msg=variable.path)
    assert SGD.from_config(optimizer.get_config()).weight_decay_exclude == "batchnorm_and_bias"
    with pytest.raises(ValueError, match="weight_decay_exclude"):
        SGD(weight_decay_exclude="bias")


# --------------------------------------------------------------- dynamic EMA


def _np_dynamic_decay(t, tau, warmup_steps):
    """`ema_update` of DM-Improves-AT's watrain.py: t = the global step after the update."""
    factor = int(t >= warmup_steps)
    delta = t - warmup_steps
    decay = min(tau, (1.0 + delta) / (10.0 + delta)) if 10.0 + delta != 0 else tau
    return decay * factor


def test_dynamic_decay_matches_the_reference_formula():
    wa = WeightAveraging(decay=0.995, start_epoch=0, dynamic_decay=True, warmup_steps=12.5)
    steps = np.arange(0, 2000)  # the cap 0.995 is reached at delta = 1790
    actual = to_np(wa.step_decay(wa.decay_at(0), keras.ops.convert_to_tensor(steps)))
    expected = [_np_dynamic_decay(t, 0.995, 12.5) for t in steps]
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
    assert actual[12] == 0.0 and actual[13] > 0 and actual[-1] == np.float32(0.995)
    # An integer warm-up: delta = -10 (where the reference guards a division by zero) gives no NaN.
    wa = WeightAveraging(decay=0.995, start_epoch=0, dynamic_decay=True, warmup_steps=10)
    assert np.all(np.isfinite(to_np(wa.step_decay(0.995, keras.ops.convert_to_tensor(np.arange(30))))))
    # Before its start epoch the average copies the online model, dynamic or not.
    assert wa.step_decay(wa.decay_at(-1), 100) == 0.0
    assert WeightAveraging(decay=0.9).step_decay(0.9, 100) == 0.9


def _classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = layers.BatchNorm(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


class _Weights(keras.callbacks.Callback):
    """The online model's weights after every step."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.model  # on jax, reading `self.model` syncs the variables with the running step's state (Keras)
        self.seen.append([np.array(w, np.float64) for w in self.classifier.get_weights()])


def test_every_ingredient_in_one_train_step_and_the_ema_teacher_matches_numpy():
    # TRADES + RPAT with label smoothing, the cosine schedule, Nesterov, no decay on BatchNorm and biases
    # and the dynamic EMA, through RPATTrainer.fit (compiled on tensorflow): the teacher after 5 steps is
    # the EMA of the online weights recomputed in NumPy, warm-up (1.5 steps) and cap (tau = 0.2) included.
    preset = presets.get("trades+rpat").with_ingredients(
        label_smoothing=0.1, lr_schedule="cosine", nesterov=True, weight_decay_exclude="batchnorm_and_bias", ema=0.2
    )
    preset = preset.with_options(epochs=4, ema_warmup_fraction=0.075)  # 0.075 * 4 epochs * 5 steps = 1.5 steps
    classifier = _classifier()
    trainer = preset.build_trainer(classifier, steps_per_epoch=5, seed=0)
    assert trainer.weight_averaging.warmup_steps == pytest.approx(1.5)
    assert [getattr(l, "label_smoothing", None) for l in trainer.loss_terms] == [0.1, None]
    trainer.compile(optimizer=preset.optimizer(steps_per_epoch=5))
    initial = [np.array(w, np.float64) for w in classifier.get_weights()]
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=(20,))
    recorder = _Weights(classifier)
    history = trainer.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    assert np.isfinite(history.history["loss"][0])
    assert int(to_np(trainer.optimizer.iterations)) == 5
    teacher = initial
    for t, online in enumerate(recorder.seen, start=1):
        d = _np_dynamic_decay(t, 0.2, 1.5)  # t = 1: copy; 2: 1.5 / 10.5; 3+: capped at 0.2
        teacher = [d * a + (1 - d) * b for a, b in zip(teacher, online)]
    assert _np_dynamic_decay(2, 0.2, 1.5) < 0.2 == _np_dynamic_decay(3, 0.2, 1.5)
    for actual, expected, variable in zip(trainer.teacher.get_weights(), teacher, classifier.weights):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    assert not np.allclose(trainer.teacher.get_weights()[0], classifier.get_weights()[0])


def test_ema_on_a_preset_with_weight_averaging_keeps_its_start_and_teacher_mode():
    preset = presets.get("rebat", teacher_training="first_epoch").with_ingredients(ema=0.995)
    wa = preset.weight_averaging
    assert (wa.decay, wa.dynamic_decay, wa.start_epoch, wa.teacher_training) == (0.995, True, 105, "first_epoch")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        preset.build_trainer(_classifier())
    assert presets.get("pgd_at").with_ingredients(ema=0.995).weight_averaging.start_epoch == 0


# ------------------------------------------------ presets, recipes, command line


def test_a_run_with_every_ingredient_builds_them():
    spec = recipes.single_run(
        "pgd_at+rpat",
        "cifar10",
        epochs=400,
        label_smoothing=0.1,
        lr_schedule="cosine",
        nesterov=True,
        weight_decay_exclude="batchnorm",
        ema=0.995,
    )
    preset = build.build_preset(spec)
    assert preset.schedule == "cosine" and preset.nesterov and preset.weight_decay_exclude == "batchnorm"
    assert [l.get_config().get("label_smoothing") for l in preset.losses] == [0.1, None]
    assert preset.weight_averaging.get_config()["dynamic_decay"] is True
    optimizer = preset.optimizer(steps_per_epoch=391)
    assert optimizer.nesterov and optimizer.weight_decay_exclude == "batchnorm"
    assert optimizer.get_config()["learning_rate"]["class_name"] == "WarmupCosineDecay"
    assert preset.learning_rate_schedule(391).get_config()["epochs"] == 400
    # The preset's own values are not options: the run is the plain one.
    assert recipes.single_run("rebat", "cifar10", lr_schedule="piecewise").options == {}
    assert recipes.single_run("trades", "cifar10", label_smoothing=0.0).options == {}
    assert set(method_presets.INGREDIENT_OPTIONS) <= set(method_presets.OPTION_TYPES)


def test_train_command_passes_the_ingredient_flags_to_the_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(cli_train.recipes, "run_single", lambda spec, *a, **k: ran.append(spec) or {})
    flags = ["--label-smoothing", "0.1", "--lr-schedule", "cosine", "--nesterov"]
    flags += ["--weight-decay-exclude", "batchnorm", "--ema", "0.995"]
    result = invoke(
        cli_train.train_command, ["--method", "trades+rpat", "--dataset", "cifar10", "--out", tmp_path / "x", *flags]
    )
    assert result.exit_code == 0, result.output
    [spec] = ran
    assert spec.options == {
        "label_smoothing": 0.1,
        "lr_schedule": "cosine",
        "nesterov": True,
        "weight_decay_exclude": "batchnorm",
        "ema": 0.995,
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--ema", "1.5"], "--ema"),
        (["--lr-schedule", "linear"], "--lr-schedule"),
        (["--weight-decay-exclude", "bias"], "--weight-decay-exclude"),
    ],
)
def test_bad_ingredient_options_are_one_line_errors(args, message):
    result = invoke(cli_train.train_command, ["--method", "trades", "--dataset", "cifar10", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "options, message",
    [({"label_smoothing": 1.0}, "label_smoothing"), ({"ema": 0.0}, "ema"), ({"lr_schedule": "step"}, "lr_schedule")],
)
def test_bad_ingredient_options_in_a_recipe(options, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.single_run("trades", "cifar10", **options)


def test_the_ingredients_run_on_a_plain_trainer():
    # The library objects without presets: RPATTrainer + losses + SGD + WeightAveraging.
    classifier = _classifier()
    trainer = RPATTrainer(
        classifier,
        losses=[losses.CrossEntropy(label_smoothing=0.1)],
        weight_averaging=WeightAveraging(decay=0.995, start_epoch=0, dynamic_decay=True, warmup_steps=1),
    )
    trainer.compile(optimizer=SGD(WarmupCosineDecay(0.1, 2, 2), nesterov=True, weight_decay_exclude="batchnorm"))
    x = np.random.default_rng(1).uniform(size=(8, 8, 8, 3)).astype("float32")
    history = trainer.fit(x, np.arange(8) % 3, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
