"""RPATTrainer: reference parity, cross-backend agreement, phases, errors."""

import itertools
import os
import subprocess
import sys

import keras_rpat  # noqa: F401  (sets the default backend)

import keras
import numpy as np
import pytest

from keras_rpat import attacks, layers, losses, models, optimizers, presets
from keras_rpat.trainer import RPATTrainer, WeightAveraging
from testing import float64_precision

from testing import np_ce  # noqa: E402

BACKEND = keras.config.backend()
BACKENDS = ("torch", "tensorflow", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_classifier(num_classes=3, seed=0, channels=4):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = layers.BatchNorm(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D(name="penultimate")(h)
    out = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, out)


def batch(n=16, num_classes=3, seed=0, size=8):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, size, size, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=(n,)).astype("int64")
    return x, y


def np_(t):
    return keras.ops.convert_to_numpy(t)


# --------------------------------------------------------------------------
# View planning
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, order",
    [
        ("pgd_at", ["adv"]),
        ("pgd_at+rpat", ["adv", "interp", "clean"]),
        ("trades", ["clean", "adv", "clean_kl"]),
        ("trades+rpat", ["clean", "adv", "clean_kl", "interp"]),
        ("mart", ["clean", "adv"]),
        ("mart+rpat", ["clean", "adv", "interp"]),
        ("consistency_at+rpat", ["adv", "interp", "clean"]),
        ("clean", ["clean"]),
    ],
)
def test_forward_order_follows_reference(method, order):
    trainer = presets.get(method).build_trainer(tiny_classifier())
    assert trainer._view_order == order


def test_teacher_views_only_from_start_epoch():
    trainer = presets.get("rpat_plus_plus").build_trainer(tiny_classifier())
    assert trainer._view_order == ["adv"]
    assert trainer._wa_decay == 0.0
    trainer.set_epoch(105)
    assert trainer._view_order == ["adv", "teacher_clean", "teacher_interp"]
    assert trainer._wa_decay == pytest.approx(0.999)


# --------------------------------------------------------------------------
# Plain-PyTorch reference parity (torch backend)
# --------------------------------------------------------------------------
@pytest.mark.skipif(BACKEND != "torch", reason="compares against a torch module in-process")
@pytest.mark.parametrize(
    "fast_path, alpha, alpha_sampling",
    [(False, 0.5, "fixed"), (True, 0.5, "fixed"), (True, 0.2, "fixed"), (False, 0.2, "fixed"), (True, 0.5, "beta-")],
)
@float64_precision()
def test_two_steps_match_plain_pytorch_reference(fast_path, alpha, alpha_sampling):
    """Two steps (3-step PGD, RP term) of the Keras and fast paths vs the authors' step in plain
    PyTorch, all in float64 (sign steps make a float32 comparison CPU-dependent)."""
    import torch
    import torch.nn.functional as F

    classifier = tiny_classifier(channels=5)
    # Non-trivial BN state.
    classifier(batch(16, seed=3)[0], training=True)
    eps, step, steps = 8 / 255, 2 / 255, 3

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(5)
            self.fc = torch.nn.Linear(5, 3)

        def forward(self, x):
            h = F.relu(self.bn(self.conv(x)))
            return self.fc(h.mean((2, 3)))

    net = Net()
    kw = {w.path.split("/")[-2] + "/" + w.path.split("/")[-1]: np_(w) for w in classifier.weights}
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor(kw["conv/kernel"]).permute(3, 2, 0, 1))
        net.bn.weight.copy_(torch.tensor(kw["bn/gamma"]))
        net.bn.bias.copy_(torch.tensor(kw["bn/beta"]))
        net.bn.running_mean.copy_(torch.tensor(kw["bn/moving_mean"]))
        net.bn.running_var.copy_(torch.tensor(kw["bn/moving_variance"]))
        net.fc.weight.copy_(torch.tensor(kw["logits/kernel"]).T)
        net.fc.bias.copy_(torch.tensor(kw["logits/bias"]))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def reference_step(x, y, r):
        # advertorch PGD (L-inf, start at x), eval-mode BN; r = 1 - alpha (the code's benign weight).
        net.eval()
        delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(net(x + delta), y)
            (g,) = torch.autograd.grad(loss, [delta])
            delta = delta.detach() + step * g.sign()
            delta = delta.clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        net.train()  # adv_train_ra.py: z(x'), z(x~), z(x), each its own forward
        z_adv = net(x_adv)
        z_int = net(r * x + (1 - r) * x_adv)
        z_cln = net(x)
        loss = F.cross_entropy(z_adv, y) + 1.0 * F.mse_loss(z_int, r * z_cln + (1 - r) * z_adv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    trainer = RPATTrainer(
        classifier,
        attack=attacks.PGD("linf", eps, step, steps, random_start=False),
        losses=[
            losses.AdversarialCrossEntropy(),
            losses.RobustPerception(alpha=alpha, weight=1.0, alpha_sampling=alpha_sampling),
        ],
        fast_path=fast_path,
        seed=3,
    )
    trainer.compile(optimizer=optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
    from keras_rpat.backend import torch_random

    for seed in (11, 12):
        x, y = batch(16, seed=seed)
        a = alpha
        if alpha_sampling == "beta-":  # the draw the trainer makes, from a copy of its generator
            generator = torch.Generator().manual_seed(0)
            generator.set_state(torch_random.device_generator(trainer.seed_generator, "cpu").get_state())
            ga, gb = (
                torch._standard_gamma(torch.full((1,), 0.75, dtype=torch.float32), generator=generator)
                for _ in range(2)
            )
            b = ga / (ga + gb)
            a = float(torch.maximum(b, 1.0 - b))  # the draw and 1 - b in float32, as the trainer's
            assert a != 0.5
        ref = reference_step(
            torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).contiguous(), torch.tensor(y), 1.0 - a
        )
        logs = trainer.train_on_batch(x, y, return_dict=True)
        assert float(logs["loss"]) == pytest.approx(ref, rel=1e-10)
    assert trainer.engine.lowered == fast_path
    kw = {w.path.split("/")[-2] + "/" + w.path.split("/")[-1]: np_(w) for w in classifier.weights}
    pairs = [
        (kw["conv/kernel"], net.conv.weight.detach().permute(2, 3, 1, 0)),
        (kw["bn/gamma"], net.bn.weight),
        (kw["bn/beta"], net.bn.bias),
        (kw["bn/moving_mean"], net.bn.running_mean),
        (kw["bn/moving_variance"], net.bn.running_var),
        (kw["logits/kernel"], net.fc.weight.detach().T),
        (kw["logits/bias"], net.fc.bias),
    ]
    for ours, theirs in pairs:
        assert ours.dtype == np.float64
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------
# torch, tensorflow and jax agree
# --------------------------------------------------------------------------
@pytest.mark.cross_backend
def test_torch_tensorflow_and_jax_agree_on_one_step(tmp_path):
    """One step of every method (tests/cross_backend_step.py: same weights, batch and start) on every backend,
    this one in this process and the others in a subprocess each, at the same time: the loss, every weight's
    gradient and the weights after the step (BatchNorm statistics and EMA teacher included) agree pairwise to
    float64 rounding."""
    script = os.path.join(HERE, "cross_backend_step.py")
    processes = {}
    for other in BACKENDS:
        if other != BACKEND:
            env = dict(os.environ, KERAS_BACKEND=other, TF_CPP_MIN_LOG_LEVEL="2")
            with open(tmp_path / f"{other}.log", "w") as log:
                command = [sys.executable, script, str(tmp_path / f"{other}.npz")]
                processes[other] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    sys.path.insert(0, HERE)
    try:
        import cross_backend_step

        cross_backend_step.main(str(tmp_path / f"{BACKEND}.npz"))
    except BaseException:
        for process in processes.values():
            process.kill()
        raise
    finally:
        sys.path.remove(HERE)
        for process in processes.values():
            process.wait(timeout=1800)
    for other, process in processes.items():
        assert process.returncode == 0, f"{other}: " + (tmp_path / f"{other}.log").read_text()[-3000:]
    results = {backend: np.load(tmp_path / f"{backend}.npz") for backend in BACKENDS}
    assert {backend: str(result["backend"]) for backend, result in results.items()} == {b: b for b in BACKENDS}
    keys = sorted(k for k in results[BACKEND].files if k != "backend")
    assert {k.split("/")[0] for k in keys} == set(cross_backend_step.METHODS)
    assert {k.split("/")[1].rstrip("0123456789") for k in keys} == {"loss", "g", "w", "t"}
    for a, b in itertools.combinations(BACKENDS, 2):
        assert sorted(results[a].files) == sorted(results[b].files), (a, b)
        for key in keys:
            assert results[a][key].dtype == results[b][key].dtype == np.float64, key
            np.testing.assert_allclose(
                results[a][key], results[b][key], rtol=1e-9, atol=1e-12, err_msg=f"{a} vs {b}: {key}"
            )


# --------------------------------------------------------------------------
# fit for every preset
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", presets.list_presets())
def test_fit_runs_for_every_preset(name):
    preset = presets.get(name).with_epochs(2)
    preset.attack and setattr(preset.attack, "num_steps", 2)
    classifier = models.get("small_cnn", num_classes=3, input_shape=(8, 8, 3), widths=(4, 4, 4))
    trainer = preset.build_trainer(classifier)
    trainer.compile(optimizer=preset.optimizer(steps_per_epoch=2))
    x, y = batch(16)
    history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert np.isfinite(logs["loss"])
    for loss in trainer.loss_terms:
        assert loss.name in logs
    if preset.attack is not None:
        assert "adv_acc" in logs
    assert 0.0 <= logs["clean_acc"] <= 1.0


def test_every_loss_term_is_active_in_its_epoch():
    preset = presets.get("rebat").with_epochs(2)
    assert preset.weight_averaging.start_epoch == 1 and preset.losses[1].start_epoch == 1
    trainer = preset.build_trainer(tiny_classifier())
    trainer.attack.num_steps = 1
    trainer.compile(optimizer=optimizers.SGD(0.05))
    x, y = batch(16)
    history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    boat = history.history["boat"]
    assert boat[0] == 0.0 and boat[1] > 0.0


# --------------------------------------------------------------------------
# Weight averaging
# --------------------------------------------------------------------------
def test_weight_average_is_copy_before_start_and_ema_after():
    classifier = tiny_classifier()
    trainer = RPATTrainer(
        classifier,
        attack=attacks.PGD(num_steps=1),
        losses=[losses.AdversarialCrossEntropy()],
        weight_averaging=WeightAveraging(decay=0.9, start_epoch=1),
    )
    trainer.compile(optimizer=optimizers.SGD(0.1))
    x, y = batch(8)
    trainer.train_on_batch(x, y)
    for t, s in zip(trainer.teacher.weights, classifier.weights):
        np.testing.assert_array_equal(np_(t), np_(s))
    trainer.set_epoch(1)
    before_t = [np_(w) for w in trainer.teacher.weights]
    trainer.train_on_batch(x, y)
    after_s = [np_(w) for w in classifier.weights]
    for t, bt, s in zip(trainer.teacher.weights, before_t, after_s):
        np.testing.assert_allclose(np_(t), 0.9 * bt + 0.1 * s, rtol=1e-5, atol=1e-7)
    assert trainer.evaluation_model is trainer.teacher


class _TeacherGap(losses.ViewLoss):
    """`sum_c (z(x) - z_wa(x))^2` per sample: its value shows the teacher's logits."""

    views = ("clean", "teacher_clean")

    def call(self, y_true, views):
        return keras.ops.sum(keras.ops.square(views["clean"] - views["teacher_clean"]), axis=-1)


def _np_tiny_forward(weights, x, training):
    """`tiny_classifier` in float64 NumPy; returns the logits and the BN input's
    batch mean and unbiased variance (`training`: batch statistics, else moving)."""
    w = {v.path: np.asarray(np_(v), np.float64) for v in weights}
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = w["conv/kernel"]
    h = sum(np.einsum("bhwc,co->bhwo", xp[:, i : i + 8, j : j + 8], kernel[i, j]) for i in range(3) for j in range(3))
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    n = h.size // h.shape[-1]
    if not training:
        mean_used, var_used = w["bn/moving_mean"], w["bn/moving_variance"]
    else:
        mean_used, var_used = mean, var
    h = (h - mean_used) / np.sqrt(var_used + 1e-5) * w["bn/gamma"] + w["bn/beta"]
    logits = np.maximum(h, 0).mean((1, 2)) @ w["logits/kernel"] + w["logits/bias"]
    return logits, mean, var * n / (n - 1)


@pytest.mark.parametrize("fast_path", [True, False] if BACKEND == "torch" else [False])
@pytest.mark.parametrize("teacher_training", [True, False, "first_epoch"])
def test_teacher_training_uses_and_moves_batch_statistics_before_the_average(fast_path, teacher_training):
    """One step against NumPy: the teacher's logits (batch or moving statistics), then
    `teacher <- d * teacher' + (1 - d) * online` where `teacher'` has the moving statistics
    its training-mode forward left (the reference's order, docs/algorithms.md#forward-order)."""
    classifier = tiny_classifier()
    decay = 0.75
    trainer = RPATTrainer(
        classifier,
        losses=[_TeacherGap(name="gap")],
        weight_averaging=WeightAveraging(decay=decay, start_epoch=0, teacher_training=teacher_training),
        post_step_clean_forward=True,  # the online statistics move again: the average's source differs
        track_clean_accuracy=False,
        fast_path=fast_path,
    )
    trainer.compile(optimizer=optimizers.SGD(0.1))
    rng = np.random.default_rng(1)
    # A teacher unlike the online model, with moving statistics unlike the batch's.
    for v in trainer.teacher.weights:
        value = np_(v)
        scale = rng.uniform(0.5, 1.5, size=value.shape) if "variance" in v.path else 1.0
        v.assign((value * scale + rng.normal(0.0, 0.3, size=value.shape)).astype(value.dtype))
    teacher_before = [np_(v) for v in trainer.teacher.weights]
    x, y = batch(16)
    clean, _, _ = _np_tiny_forward(classifier.weights, x, training=True)
    train_mode = teacher_training in (True, "first_epoch")
    teacher, mean, unbiased = _np_tiny_forward(trainer.teacher.weights, x, training=train_mode)

    logs = trainer.train_on_batch(x, y, return_dict=True)
    if BACKEND == "torch":
        assert trainer.engine.lowered == fast_path
    expected = np.mean(np.sum((clean - teacher) ** 2, axis=-1))
    assert float(logs["gap"]) == pytest.approx(expected, rel=1e-5)
    for v, t0, s in zip(trainer.teacher.weights, teacher_before, classifier.weights):
        name = v.path
        moved = t0
        if train_mode and name == "bn/moving_mean":
            moved = 0.9 * t0 + 0.1 * mean
        if train_mode and name == "bn/moving_variance":
            moved = 0.9 * t0 + 0.1 * unbiased
        np.testing.assert_allclose(np_(v), decay * moved + (1 - decay) * np_(s), rtol=1e-5, atol=1e-6, err_msg=name)

    # "first_epoch": inference mode from the next epoch on.
    trainer.set_epoch(1)
    clean, _, _ = _np_tiny_forward(classifier.weights, x, training=True)
    teacher, _, _ = _np_tiny_forward(trainer.teacher.weights, x, training=teacher_training is True)
    logs = trainer.train_on_batch(x, y, return_dict=True)
    expected = np.mean(np.sum((clean - teacher) ** 2, axis=-1))
    assert float(logs["gap"]) == pytest.approx(expected, rel=1e-5)


def test_presets_teacher_training_option_reaches_the_trainer():
    preset = presets.get("rpat_plus_plus", teacher_training="first_epoch").with_epochs(4)
    trainer = preset.build_trainer(tiny_classifier())
    start = trainer.weight_averaging.start_epoch
    assert trainer.weight_averaging.teacher_training == "first_epoch" and start == 2
    assert [trainer.weight_averaging.teacher_training_at(e) for e in range(4)] == [False, False, True, False]
    assert presets.get("rebat").weight_averaging.teacher_training is False
    assert presets.get("wa", teacher_training=True).weight_averaging.teacher_training is True
    with pytest.raises(ValueError, match="applies to the presets"):
        presets.get("pgd_at", teacher_training=True)
    with pytest.raises(ValueError, match="Received: teacher_training='last_epoch'"):
        WeightAveraging(teacher_training="last_epoch")


def test_post_step_clean_forward_moves_bn_statistics_only():
    def run(flag):
        classifier = tiny_classifier()
        trainer = RPATTrainer(
            classifier, attack=attacks.PGD(num_steps=1, random_start=False), post_step_clean_forward=flag
        )
        trainer.compile(optimizer=optimizers.SGD(0.1))
        trainer.train_on_batch(*batch(8))
        return {w.path: np_(w) for w in classifier.weights}

    a, b = run(False), run(True)
    for path in a:
        if "moving" in path:
            assert not np.allclose(a[path], b[path])
        else:
            np.testing.assert_allclose(a[path], b[path], rtol=1e-6)


# --------------------------------------------------------------------------
# Options no other test would notice if ignored
# --------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [[3.0, 1.0], {"adv_ce": 3.0}])
def test_loss_weights_multiply_their_terms_in_the_total(weights):
    trainer = RPATTrainer(
        tiny_classifier(),
        attack=attacks.PGD(num_steps=1),
        losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception()],
        loss_weights=weights,
    )
    trainer.compile(optimizer=optimizers.SGD(0.1))
    logs = trainer.train_on_batch(*batch(8), return_dict=True)
    assert logs["loss"] == pytest.approx(3.0 * logs["adv_ce"] + logs["rpat"], rel=1e-6)


@pytest.mark.parametrize("track", [True, False])
def test_track_clean_accuracy_reports_the_inference_accuracy_before_the_step(track):
    classifier = tiny_classifier()
    x, y = batch(16)
    before = np.mean(np.argmax(np_(classifier(x, training=False)), axis=-1) == y)
    trainer = RPATTrainer(classifier, attack=attacks.PGD(num_steps=1), track_clean_accuracy=track)
    trainer.compile(optimizer=optimizers.SGD(0.1))
    logs = trainer.train_on_batch(x, y, return_dict=True)
    # Not tracked: the tracker is never updated (no extra forward), so it reads 0.
    assert logs["clean_acc"] == pytest.approx(before if track else 0.0)


def test_trainer_seed_fixes_the_sampled_interpolation_weight():
    def rpat_value(seed):
        trainer = RPATTrainer(
            tiny_classifier(),
            attack=attacks.PGD(num_steps=1, seed=0),
            losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception(alpha_sampling="beta-")],
            seed=seed,
        )
        trainer.compile(optimizer=optimizers.SGD(0.1))
        return trainer.train_on_batch(*batch(8), return_dict=True)["rpat"]

    assert rpat_value(7) == rpat_value(7)
    assert rpat_value(7) != rpat_value(8)


def test_validate_inputs_false_skips_the_pixel_check():
    x, y = batch(8)
    trainer = RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=1))
    trainer.compile(optimizer=optimizers.SGD(0.1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        trainer.fit(x * 255, y, batch_size=8, verbose=0)
    trainer.fit(x * 255, y, batch_size=8, verbose=0, validate_inputs=False)


@pytest.mark.parametrize("evaluate_average", [True, False])
def test_evaluate_average_chooses_the_model_evaluate_reports(evaluate_average):
    classifier = tiny_classifier()
    trainer = RPATTrainer(
        classifier,
        attack=attacks.PGD(num_steps=1),
        weight_averaging=WeightAveraging(decay=0.5, start_epoch=0, evaluate_average=evaluate_average),
    )
    trainer.compile(optimizer=optimizers.SGD(0.5))
    x, y = batch(8)
    trainer.train_on_batch(x, y)
    model = trainer.teacher if evaluate_average else classifier
    assert trainer.evaluation_model is model
    expected = np.mean(np_ce(y, np_(model(x, training=False))))
    other = np.mean(np_ce(y, np_((classifier if evaluate_average else trainer.teacher)(x, training=False))))
    assert abs(expected - other) > 1e-4
    assert trainer.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------
# Capturable step: no host synchronisation, no branch on tensor values
# --------------------------------------------------------------------------
@pytest.mark.skipif(BACKEND != "torch", reason="tensorflow traces the step as a graph already")
@pytest.mark.parametrize("method", ["pgd_at+rpat", "trades+rpat", "mart+rpat", "rpat_plus_plus", "rebat"])
def test_train_step_makes_no_host_sync(method, monkeypatch):
    import torch

    preset = presets.get(method)
    preset.attack.num_steps = 2
    if preset.weight_averaging is not None:
        preset.weight_averaging.start_epoch = 0
        for loss in preset.losses:
            loss.start_epoch = 0
    trainer = preset.build_trainer(tiny_classifier())
    trainer.compile(optimizer=optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
    x, y = batch(8)
    data = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
    trainer.train_step(data)  # warm-up: builds optimizer state

    def forbidden(name):
        def fail(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation in the train step: Tensor.{name}")

        return fail

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    trainer.train_step(data)


# --------------------------------------------------------------------------
# CutMix, saving, schedules
# --------------------------------------------------------------------------
def test_soft_labels_give_the_mixed_cross_entropy():
    classifier = tiny_classifier()
    x, y = batch(8)
    y2 = np.roll(y, 1)
    lam = 0.3
    soft = (lam * np.eye(3)[y] + (1 - lam) * np.eye(3)[y2]).astype("float32")
    trainer = RPATTrainer(classifier, attack=attacks.RandomNoise(1e-6), losses=[losses.AdversarialCrossEntropy()])
    trainer.compile(optimizer=optimizers.SGD(0.0))
    logs = trainer.test_on_batch(x, soft, return_dict=True)
    logits = np_(classifier(x, training=False))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -(lam * logp[np.arange(8), y] + (1 - lam) * logp[np.arange(8), y2]).mean()
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-5)
    trainer.fit(x, soft, batch_size=8, epochs=1, verbose=0)


def test_keras_file_round_trip(tmp_path):
    preset = presets.get("rpat_plus_plus")
    classifier = models.get("small_cnn", num_classes=3, input_shape=(8, 8, 3), widths=(4, 4, 4), normalize="cifar10")
    trainer = preset.build_trainer(classifier, eval_attack=attacks.PGD(num_steps=1))
    trainer.compile(optimizer=optimizers.SGD(0.1))
    x, y = batch(8)
    trainer.train_on_batch(x, y)
    path = tmp_path / "trainer.keras"
    trainer.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RPATTrainer)
    assert loaded.get_config()["losses"] == trainer.get_config()["losses"]
    assert repr(loaded.attack) == repr(trainer.attack)
    np.testing.assert_allclose(np_(loaded.predict(x, verbose=0)), np_(trainer.predict(x, verbose=0)), rtol=1e-5)
    np.testing.assert_allclose(
        np_(loaded.teacher(x, training=False)), np_(trainer.teacher(x, training=False)), rtol=1e-5
    )
    classifier_path = tmp_path / "classifier.keras"
    trainer.classifier.save(classifier_path)
    again = keras.saving.load_model(classifier_path)
    np.testing.assert_allclose(np_(again(x)), np_(classifier(x)), rtol=1e-5)


def test_attack_schedule_switches_attack_between_epochs():
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, 1, schedule={1: {"epsilon": 10 / 255, "num_steps": 2}})
    trainer = RPATTrainer(tiny_classifier(), attack=attack)
    trainer.compile(optimizer=optimizers.SGD(0.1))
    x, y = batch(8)
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert trainer._active_attack.epsilon == pytest.approx(8 / 255)
    trainer.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0)
    assert trainer._active_attack.epsilon == pytest.approx(10 / 255)
    assert trainer._active_attack.num_steps == 2


def test_evaluate_reports_clean_and_adversarial_accuracy():
    trainer = RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=1), eval_attack=attacks.PGD(num_steps=2))
    trainer.compile(optimizer=optimizers.SGD(0.1))
    x, y = batch(16)
    logs = trainer.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert set(logs) >= {"loss", "clean_acc", "adv_acc"}
    assert logs["adv_acc"] <= logs["clean_acc"] + 1e-6


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
def compiled_trainer(**kwargs):
    trainer = RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=1), **kwargs)
    trainer.compile(optimizer=optimizers.SGD(0.1))
    return trainer


def test_pixels_outside_unit_range_are_rejected():
    x, y = batch(8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compiled_trainer().fit(x * 255.0, y, epochs=1, verbose=0)


def test_integer_images_are_rejected():
    x, y = batch(8)
    with pytest.raises(ValueError, match="255"):
        compiled_trainer().fit((x * 255).astype("uint8"), y, epochs=1, verbose=0)


def test_labels_out_of_range_are_rejected():
    x, y = batch(8)
    with pytest.raises(ValueError, match="num_classes|range"):
        compiled_trainer().fit(x, y + 3, epochs=1, verbose=0)


def test_fit_requires_compile():
    trainer = RPATTrainer(tiny_classifier(), attack=attacks.PGD(num_steps=1))
    with pytest.raises(ValueError, match="compile"):
        trainer.fit(*batch(8), epochs=1, verbose=0)


def test_loss_needing_an_attack_without_one():
    with pytest.raises(ValueError, match="needs an attack"):
        RPATTrainer(tiny_classifier(), attack=None, losses=[losses.AdversarialCrossEntropy()])


def test_teacher_loss_without_weight_averaging():
    with pytest.raises(ValueError, match="WeightAveraging"):
        RPATTrainer(tiny_classifier(), attack=attacks.PGD(), losses=[losses.AdversarialCrossEntropy(), losses.BoAT()])


def test_feature_proxy_needs_named_layer():
    inputs = keras.Input((8, 8, 3))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="third_to_last"):
        RPATTrainer(
            keras.Model(inputs, out),
            attack=attacks.PGD(),
            losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception(proxy="third_to_last")],
        )


def test_feature_proxy_trains():
    classifier = models.get("small_cnn", num_classes=3, input_shape=(8, 8, 3), widths=(4, 4, 4))
    for proxy in ("penultimate", "third_to_last"):
        trainer = RPATTrainer(
            classifier,
            attack=attacks.PGD(num_steps=1),
            losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception(proxy=proxy)],
        )
        trainer.compile(optimizer=optimizers.SGD(0.1))
        logs = trainer.train_on_batch(*batch(8), return_dict=True)
        assert np.isfinite(logs["rpat"]) and logs["rpat"] > 0


def test_duplicate_loss_names_and_bad_weights():
    with pytest.raises(ValueError, match="unique"):
        RPATTrainer(tiny_classifier(), attack=attacks.PGD(), losses=[losses.AdversarialCrossEntropy()] * 2)
    with pytest.raises(ValueError, match="one entry per loss"):
        RPATTrainer(tiny_classifier(), attack=attacks.PGD(), loss_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="keras.Model"):
        RPATTrainer(lambda x: x, attack=attacks.PGD())


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="pgd_at"):
        presets.get("pgd_att")


@pytest.mark.skipif(BACKEND != "torch", reason="device-side generators exist on torch only")
def test_device_random_state_round_trips_for_resume():
    from keras_rpat import backend as rpat_backend
    from keras_rpat.backend import torch as torch_backend

    seed = keras.random.SeedGenerator(3)
    rpat_backend.random_uniform((2,), 0.0, 1.0, "float32", seed)
    state = torch_backend.get_random_state(seed)
    first = np_(rpat_backend.random_uniform((5,), 0.0, 1.0, "float32", seed))
    torch_backend.set_random_state(seed, state)
    again = np_(rpat_backend.random_uniform((5,), 0.0, 1.0, "float32", seed))
    np.testing.assert_array_equal(first, again)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the method is Keras' TensorFlow trainer's")
def test_the_private_keras_method_the_trainer_overrides_is_the_one_it_was_written_for():
    """`RPATTrainer._maybe_symbolic_build` overrides a private Keras method (no public way exists): this
    fails when a Keras release renames it, changes its arguments, stops calling it from `fit` /
    `evaluate` or stops averaging the batch with `strategy.reduce(axis=None)`; then re-check the override."""
    import inspect

    method = keras.Model._maybe_symbolic_build
    assert RPATTrainer._maybe_symbolic_build is not method
    assert list(inspect.signature(method).parameters) == ["self", "iterator", "data_batch"]
    assert "self._maybe_symbolic_build(iterator=epoch_iterator)" in inspect.getsource(keras.Model.fit)
    assert "self._maybe_symbolic_build(iterator=epoch_iterator)" in inspect.getsource(keras.Model.evaluate)
    assert "axis=None" in inspect.getsource(method)
    assert inspect.signature(RPATTrainer._maybe_symbolic_build) == inspect.signature(method)
