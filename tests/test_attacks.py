"""Tests of `keras_rpat.attacks` (docs/algorithms.md#attacks).

Numerical checks use a linear model `Flatten -> Dense`, whose input gradient is
analytic, and compare whole PGD runs against a NumPy (float64) re-implementation
written here from the table of docs/algorithms.md#attacks. Behavioural checks (budget, box,
BatchNorm state, loss increase) use a tiny Conv-BatchNorm-ReLU-GAP-Dense network.
"""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import copy
import json
import random

import keras
import numpy as np
import pytest

from keras_rpat import attacks
from keras_rpat import backend as rpat_backend

from testing import BACKEND  # noqa: E402
from testing import float64_precision  # noqa: E402
from testing import np_ce  # noqa: E402
from testing import np_log_softmax  # noqa: E402
from testing import np_softmax  # noqa: E402
from testing import np_targets  # noqa: E402
from testing import to_np  # noqa: E402

SHAPE = (4, 4, 3)


# ---------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------


def linear_logits(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b


def ce_mean_grad(x, y, w, b):
    """d/dx of mean_i CE(W^T flat(x_i) + b, y_i): (softmax - targets) W^T / B."""
    z = linear_logits(x, w, b)
    dz = (np_softmax(z) - np_targets(y, w.shape[1])) / x.shape[0]
    return (dz @ w.T).reshape(x.shape)


def kl_sum(x_clean, x_adv, w, b):
    log_p = np_log_softmax(linear_logits(x_clean, w, b))
    log_q = np_log_softmax(linear_logits(x_adv, w, b))
    return np.sum(np.exp(log_p) * (log_p - log_q))


def kl_sum_grad(x_clean, x_adv, w, b):
    """d/dx' of sum_i KL(p(x_i) || p(x'_i)) = (q - p) W^T, no 1/B."""
    p = np_softmax(linear_logits(x_clean, w, b))
    q = np_softmax(linear_logits(x_adv, w, b))
    return ((q - p) @ w.T).reshape(x_adv.shape)


def per_sample_norm(v):
    return np.sqrt(np.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)).reshape((-1,) + (1,) * (v.ndim - 1))


def np_pgd(x, grad_fn, norm, style, eps, step, num_steps, delta0=None):
    """PGD as in docs/algorithms.md#attacks (no random start unless `delta0` is given)."""
    delta = np.zeros_like(x) if delta0 is None else delta0.copy()
    grads = []
    for _ in range(num_steps):
        g = grad_fn(x + delta)
        grads.append(g)
        if norm == "linf":
            delta = delta + step * np.sign(g)
            if style == "trades":
                x_adv = np.minimum(np.maximum(x + delta, x - eps), x + eps)
                delta = np.clip(x_adv, 0, 1) - x
            else:
                delta = np.clip(delta, -eps, eps)
                delta = np.clip(x + delta, 0, 1) - x
        elif style == "advertorch":
            delta = delta + step * g / np.maximum(per_sample_norm(g), 1e-6)
            delta = np.clip(x + delta, 0, 1) - x  # box first ...
            n = per_sample_norm(delta)
            delta = delta * np.minimum(1.0, eps / np.maximum(n, 1e-30))  # ... then into the ball
        else:
            floor = 1e-8 if style == "trades" else 1e-10
            delta = delta + step * g / (per_sample_norm(g) + floor)
            n = per_sample_norm(delta)  # torch.renorm(p=2, dim=0, maxnorm=eps)
            delta = np.where(n > eps, delta * eps / (n + 1e-7), delta)
            delta = np.clip(x + delta, 0, 1) - x
    return x + delta, grads


# ---------------------------------------------------------------------------
# Models and helpers
# ---------------------------------------------------------------------------


def linear_model(w, b):
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(w.shape[1])])
    model.layers[-1].set_weights([w.astype(keras.config.floatx()), b.astype(keras.config.floatx())])
    return model


def linear_problem(seed=0, batch=4, classes=5, w_scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(batch,) + SHAPE).astype(np.float32)
    x[:, 0, 0, :] = 0.0  # pixels on the box boundary
    x[:, 1, 1, :] = 1.0
    w = (w_scale * rng.standard_normal((int(np.prod(SHAPE)), classes))).astype(np.float32)
    b = (0.1 * rng.standard_normal(classes)).astype(np.float32)
    y = rng.integers(0, classes, size=batch)
    return x, y, w.astype(np.float64), b.astype(np.float64)


def conv_bn_model(seed=0, classes=5):
    """Conv-BatchNorm-ReLU-GAP-Dense with non-trivial BatchNorm moving statistics."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(classes)(h)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(seed).uniform(0, 1, size=(16, 8, 8, 3)).astype(np.float32)
    model(x, training=True)  # one training-mode forward: moving stats move away from 0 / 1
    bn = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    assert np.abs(to_np(bn.moving_mean)).max() > 1e-3
    return model, bn


def bn_state(bn):
    return to_np(bn.moving_mean).copy(), to_np(bn.moving_variance).copy()


def image_batch(seed=1, batch=8):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(batch, 8, 8, 3)).astype(np.float32)
    x[:, :2] = np.round(x[:, :2])  # some pixels exactly at 0 and 1
    return x, rng.integers(0, 5, size=batch)


def model_ce(model, x, y):
    return np_ce(y, to_np(model(x, training=False))).mean()


class Recorder:
    """Wraps `keras_rpat.backend.input_gradient` to record each step's input, loss and gradient."""

    def __init__(self, monkeypatch):
        self.inputs, self.losses, self.grads = [], [], []
        original = rpat_backend.input_gradient

        def wrapped(loss_fn, x):
            loss, grad = original(loss_fn, x)
            self.inputs.append(to_np(x))
            self.losses.append(float(to_np(loss)))
            self.grads.append(to_np(grad))
            return loss, grad

        monkeypatch.setattr(rpat_backend, "input_gradient", wrapped)


def _check_no_sign_ambiguity(grads):
    # a float32 gradient component that is ~0 could flip sign; this data has none
    for g in grads:
        a = np.abs(g).reshape(g.shape[0], -1)
        assert np.all(a.min(axis=1) > 1e-4 * a.max(axis=1))


# ---------------------------------------------------------------------------
# PGD against NumPy on a linear model
# ---------------------------------------------------------------------------

BUDGETS = {"linf": (0.1, 0.07), "l2": (0.5, 0.4)}  # (epsilon, step): 2 steps leave the ball


@pytest.mark.parametrize("num_steps", [1, 2])
@pytest.mark.parametrize("style", ["advertorch", "trades", "sotas"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_steps_match_numpy(norm, style, num_steps, monkeypatch):
    x, y, w, b = linear_problem(seed=3)
    eps, step = BUDGETS[norm]
    attack = attacks.PGD(norm, eps, step, num_steps, random_start=False, style=style)
    rec = Recorder(monkeypatch)
    x_adv = to_np(attack(linear_model(w, b), x, y))
    x64 = x.astype(np.float64)
    expected, grads = np_pgd(x64, lambda xa: ce_mean_grad(xa, y, w, b), norm, style, eps, step, num_steps)
    if norm == "linf":
        _check_no_sign_ambiguity(grads)
    np.testing.assert_allclose(x_adv, expected, rtol=0, atol=1e-5)
    # the attack loss is the batch-mean cross-entropy
    assert len(rec.losses) == num_steps
    for xi, loss, grad in zip(rec.inputs, rec.losses, rec.grads):
        np.testing.assert_allclose(loss, np_ce(y, linear_logits(xi, w, b)).mean(), rtol=1e-5)
        np.testing.assert_allclose(grad, ce_mean_grad(xi, y, w, b), rtol=1e-4, atol=1e-7)
    # the projections were active in this set-up (the test discriminates)
    assert np.any(expected == 0.0) and np.any(expected == 1.0)
    if norm == "l2" and num_steps == 2:
        # two steps of 0.4 leave the 0.5-ball: the projection was active
        radius = per_sample_norm(expected - x64).max()
        assert 0.45 < radius <= eps * (1 + 1e-9)
        if style == "advertorch":  # scaled into the ball last: exactly on the sphere
            np.testing.assert_allclose(radius, eps, rtol=1e-9)


def test_pgd_cutmix_soft_labels_match_numpy():
    x, _, w, b = linear_problem(seed=4)
    rng = np.random.default_rng(4)
    lam = 0.35
    soft = lam * np.eye(5)[rng.integers(0, 5, 4)] + (1 - lam) * np.eye(5)[rng.integers(0, 5, 4)]
    attack = attacks.PGD("l2", 0.5, 0.4, 2, random_start=False, style="sotas")
    x_adv = to_np(attack(linear_model(w, b), x, soft.astype(np.float32)))
    expected, _ = np_pgd(x.astype(np.float64), lambda xa: ce_mean_grad(xa, soft, w, b), "l2", "sotas", 0.5, 0.4, 2)
    np.testing.assert_allclose(x_adv, expected, atol=1e-5)


@float64_precision()
def test_l2_gradient_normalisation_floors():
    # tiny weights: per-sample |g| ~ 1e-7, so the floors of docs/algorithms.md#attacks decide the
    # step length: advertorch s*|g|/max(|g|, 1e-6), trades s*|g|/(|g| + 1e-8), sotas 1e-10.
    # In float64: a float32 gradient of norm 1e-7 has a relative error ~1e-4.
    x, y, w, b = linear_problem(seed=5, w_scale=1e-7)
    x = np.clip(x, 0.2, 0.8)  # no box clipping: step lengths are visible in the norms
    eps, step = 0.5, 0.4
    x64 = x.astype(np.float64)
    g = ce_mean_grad(x64, y, w, b)
    assert 1e-8 < per_sample_norm(g).min() and per_sample_norm(g).max() < 1e-6
    lengths = {}
    for style in ("advertorch", "trades", "sotas"):
        expected, _ = np_pgd(x64, lambda xa: ce_mean_grad(xa, y, w, b), "l2", style, eps, step, 1)
        got = to_np(attacks.PGD("l2", eps, step, 1, random_start=False, style=style)(linear_model(w, b), x, y))
        lengths[style] = per_sample_norm(got - x64).ravel()
        np.testing.assert_allclose(lengths[style], per_sample_norm(expected - x64).ravel(), rtol=1e-9)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the three floors give clearly different steps here
    assert lengths["advertorch"].max() < 0.5 * lengths["trades"].min()
    assert lengths["trades"].max() < 0.99 * step
    # sotas' 1e-10 floor shortens the step of a 1e-7 gradient by ~1e-3 only
    norms = per_sample_norm(g).ravel()
    np.testing.assert_allclose(lengths["sotas"], step * norms / (norms + 1e-10), rtol=1e-9)
    assert lengths["sotas"].min() > 0.99 * step


@pytest.mark.parametrize("norm", ["linf", "l2"])
@float64_precision()
def test_trades_kl_attack_sums_kl_to_fixed_clean_prediction(norm, monkeypatch):
    """In float64: the KL of nearly equal distributions and its gradient (q - p ~ 1e-3) have
    float32 errors of 1e-4 relative."""
    x, y, w, b = linear_problem(seed=6)
    x = np.clip(x, 0.2, 0.8)  # keep the Gaussian start inside the box
    eps, step = BUDGETS[norm]
    attack = attacks.TRADESAttack(norm, eps, step, num_steps=3, seed=1)
    assert attack.style == "trades" and attack.loss == "kl" and attack.training is False
    rec = Recorder(monkeypatch)
    x_adv = to_np(attack(linear_model(w, b), x, y))
    x64 = x.astype(np.float64)
    start = rec.inputs[0]
    # start: x + 0.001 N(0, I)
    assert 0 < np.abs(start - x64).max() < 0.01  # a bound on 0.001 N(0, I) (10 sigma), not a tolerance
    for xi, loss, grad in zip(rec.inputs, rec.losses, rec.grads):
        # SUM over the batch of KL(p(x) || p(x')): clean prediction from the clean x
        np.testing.assert_allclose(loss, kl_sum(x64, xi, w, b), rtol=1e-9, atol=1e-15)
        expected_grad = kl_sum_grad(x64, xi, w, b)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12 * np.abs(expected_grad).max())
    # after a step the KL is large enough that sum and mean (x4) are far apart
    assert rec.losses[-1] > 1e-2
    np.testing.assert_allclose(rec.losses[-1], kl_sum(x64, rec.inputs[-1], w, b), rtol=1e-9)
    expected, grads = np_pgd(
        x64, lambda xa: kl_sum_grad(x64, xa, w, b), norm, "trades", eps, step, 3, delta0=start - x64
    )
    if norm == "linf":
        _check_no_sign_ambiguity(grads)
    np.testing.assert_allclose(x_adv, expected, rtol=0, atol=1e-12)
    assert kl_sum(x64, x_adv, w, b) > 10 * kl_sum(x64, start, w, b)


def test_mart_attack_is_ce_from_gaussian_start(monkeypatch):
    x, y, w, b = linear_problem(seed=7)
    attack = attacks.MARTAttack("linf", 0.1, 0.07, num_steps=2, seed=2)
    assert attack.style == "trades" and attack.loss == "ce"
    rec = Recorder(monkeypatch)
    attack(linear_model(w, b), x, y)
    for xi, loss in zip(rec.inputs, rec.losses):
        np.testing.assert_allclose(loss, np_ce(y, linear_logits(xi, w, b)).mean(), rtol=1e-5)
    d0 = rec.inputs[0] - x
    assert 0 < np.abs(d0).max() < 0.01  # a bound on 0.001 N(0, I) (10 sigma), not a tolerance
    assert np.any(rec.inputs[0] < 0)  # the Gaussian start is not clipped (docs/algorithms.md#trades-mart-start)


def test_fgsm_is_one_sign_step_of_size_epsilon():
    x, y, w, b = linear_problem(seed=8)
    eps = 8 / 255
    attack = attacks.FGSM(eps)
    assert (attack.num_steps, attack.step_size, attack.norm, attack.random_start) == (1, eps, "linf", False)
    x64 = x.astype(np.float64)
    g = ce_mean_grad(x64, y, w, b)
    _check_no_sign_ambiguity([g])
    expected = np.clip(x64 + eps * np.sign(g), 0, 1)
    np.testing.assert_allclose(to_np(attack(linear_model(w, b), x, y)), expected, atol=1e-6)


# ---------------------------------------------------------------------------
# Behaviour on a Conv-BN network
# ---------------------------------------------------------------------------

CONV_BUDGETS = {"linf": (0.05, 0.02), "l2": (0.5, 0.2)}


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("style", ["advertorch", "trades", "sotas"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_budget_box_bn_state_and_loss_increase(norm, style, random_start):
    model, bn = conv_bn_model()
    x, y = image_batch()
    eps, step = CONV_BUDGETS[norm]
    before = bn_state(bn)
    attack = attacks.PGD(norm, eps, step, num_steps=5, random_start=random_start, style=style, seed=0)
    x_adv = to_np(attack(model, x, y))
    x64 = x.astype(np.float64)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if norm == "linf":
        assert np.abs(x_adv - x64).max() <= eps + 1e-6
    else:
        assert per_sample_norm(x_adv - x64).max() <= eps * (1 + 1e-5)
    assert np.abs(x_adv - x64).max() > 0.5 * (eps if norm == "linf" else step / 8)
    after = bn_state(bn)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert model_ce(model, x_adv, y) > model_ce(model, x, y) + 1e-3


def test_kl_attack_increases_kl_within_budget():
    model, bn = conv_bn_model(seed=2)
    x, y = image_batch(seed=3)
    before = bn_state(bn)
    x_adv = to_np(attacks.TRADESAttack("linf", 0.05, 0.02, num_steps=5, seed=0)(model, x, y))
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    p_log = np_log_softmax(to_np(model(x, training=False)))
    q_log = np_log_softmax(to_np(model(x_adv, training=False)))
    assert np.sum(np.exp(p_log) * (p_log - q_log)) > 1e-4
    np.testing.assert_array_equal(bn_state(bn)[0], before[0])


@pytest.mark.parametrize("style", ["advertorch", "sotas"])
def test_training_mode_attack_updates_bn_statistics(style):
    model, bn = conv_bn_model(seed=4)
    x, y = image_batch(seed=5)
    before = bn_state(bn)
    attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=2, style=style, training=True, seed=0)(model, x, y)
    after = bn_state(bn)
    assert np.abs(after[0] - before[0]).max() > 1e-4
    assert np.abs(after[1] - before[1]).max() > 1e-4


class _CountingModel(keras.Model):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.training_calls = 0
        self.inference_calls = 0

    def call(self, x, training=None):
        if training:
            self.training_calls += 1
        else:
            self.inference_calls += 1
        return self.inner(x, training=training)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_sotas_training_mode_attack_has_the_extra_final_forward(num_steps):
    """SOTAs `attack_pgd`: `attack_iters` train-mode forwards + 1 final loss forward.

    docs/algorithms.md#rebat ("10 steps + 1 extra forward, all in train mode") and docs/algorithms.md#forward-order
    ("attack iterations (10) + final loss eval (1) ... updated every forward"):
    with `training=True` BatchNorm moving statistics move once per forward.
    """
    inner, _ = conv_bn_model(seed=6)
    model = _CountingModel(inner)
    x, y = image_batch(seed=6)
    attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=num_steps, style="sotas", training=True, seed=0)(model, x, y)
    assert model.training_calls == num_steps + 1


def test_inference_attack_runs_model_in_inference_mode_only():
    inner, _ = conv_bn_model(seed=6)
    model = _CountingModel(inner)
    x, y = image_batch(seed=6)
    attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=3)(model, x, y)
    assert model.training_calls == 0 and model.inference_calls >= 3


def test_attack_output_is_a_constant():
    model, _ = conv_bn_model(seed=7)
    x, y = image_batch(seed=7)
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=2, seed=0)
    if BACKEND == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        x_adv = attack(model, xt, y)
        assert not x_adv.requires_grad and x_adv.grad_fn is None
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            x_adv = attack(model, xt, y)
            total = tf.reduce_sum(x_adv)
        assert tape.gradient(total, xt) is None
    else:  # jax: no gradient flows back through the attack's output
        _, grad = rpat_backend.input_gradient(lambda xt: keras.ops.sum(attack(model, xt, y)), x)
        assert not np.any(to_np(grad))
        x_adv = attack(model, x, y)
    assert np.abs(to_np(x_adv) - x).max() > 0


# ---------------------------------------------------------------------------
# Random starts and random noise
# ---------------------------------------------------------------------------


def _identity_like_model():
    return linear_model(*linear_problem(seed=9)[2:])


def test_advertorch_linf_random_start_is_uniform_in_the_ball():
    eps = 8 / 255
    x = np.full((64,) + SHAPE, 0.5, np.float32)
    y = np.zeros(64, int)
    delta = to_np(attacks.PGD("linf", eps, 2 / 255, num_steps=0, seed=0)(_identity_like_model(), x, y)) - 0.5
    assert np.abs(delta).max() <= eps + 1e-6
    assert np.abs(delta).max() > 0.95 * eps
    assert abs(delta.mean()) < 0.05 * eps  # sampling: 6144 uniform draws, sd of the mean 0.007 eps
    np.testing.assert_allclose(delta.std(), eps / np.sqrt(3), rtol=0.05)  # sampling: sd of the std ~1%
    # clipped to the box at the boundary
    x_edge = np.zeros((8,) + SHAPE, np.float32)
    out = to_np(attacks.PGD("linf", eps, 2 / 255, num_steps=0, seed=1)(_identity_like_model(), x_edge, y[:8]))
    assert out.min() == 0.0 and out.max() <= eps + 1e-6 and out.max() > 0


def test_trades_random_start_is_small_gaussian():
    x = np.full((64,) + SHAPE, 0.5, np.float32)
    y = np.zeros(64, int)
    for attack in (attacks.TRADESAttack(num_steps=0, seed=0), attacks.MARTAttack(num_steps=0, seed=0)):
        delta = to_np(attack(_identity_like_model(), x, y)) - 0.5
        np.testing.assert_allclose(delta.std(), 0.001, rtol=0.1)  # sampling: sd of the std ~1%
        assert abs(delta.mean()) < 1e-4
        assert np.abs(delta).max() < 0.006  # a 6 sigma bound on 0.001 N(0, I), not a tolerance


def test_sotas_l2_random_start_has_uniform_radius():
    eps = 0.5
    x = np.full((64,) + SHAPE, 0.5, np.float32)
    y = np.zeros(64, int)
    attack = attacks.PGD("l2", eps, 0.1, num_steps=0, style="sotas", seed=0)
    radii = per_sample_norm(to_np(attack(_identity_like_model(), x, y)) - 0.5).ravel()
    assert radii.max() <= eps * (1 + 1e-5)
    assert radii.min() < 0.3 * eps and radii.max() > 0.7 * eps  # varying radii
    assert abs(radii.mean() / eps - 0.5) < 0.15  # radius ~ eps * U[0, 1], not volume-uniform


def test_advertorch_l2_random_start_is_on_the_sphere():
    eps = 0.5
    x = np.full((16,) + SHAPE, 0.5, np.float32)
    attack = attacks.PGD("l2", eps, 0.1, num_steps=0, seed=0)
    delta = to_np(attack(_identity_like_model(), x, np.zeros(16, int))) - 0.5
    np.testing.assert_allclose(per_sample_norm(delta).ravel(), eps, rtol=1e-5)


def test_random_start_false_with_zero_steps_is_identity():
    x, y, w, b = linear_problem(seed=10)
    for style in ("advertorch", "trades", "sotas"):
        for norm in ("linf", "l2"):
            out = attacks.PGD(norm, 0.1, 0.05, num_steps=0, random_start=False, style=style)(linear_model(w, b), x, y)
            np.testing.assert_array_equal(to_np(out), x.astype(np.float64))


def test_random_noise_within_budget_and_fresh_each_call():
    eps = 8 / 255
    x, y = image_batch(seed=11)
    model, _ = conv_bn_model(seed=0)
    attack = attacks.RandomNoise(eps, seed=0)
    a, b = to_np(attack(model, x, y)), to_np(attack(model, x, y))
    for out in (a, b):
        assert np.abs(out - x).max() <= eps + 1e-6
        assert out.min() >= 0 and out.max() <= 1
        assert np.abs(out - x).max() > 0.9 * eps
    assert np.abs(a - b).max() > 1e-3
    # same seed, new object: same first draw
    np.testing.assert_array_equal(to_np(attacks.RandomNoise(eps, seed=0)(model, x, y)), a)


def test_seeded_random_start_is_reproducible():
    x, y = image_batch(seed=12)
    model, _ = conv_bn_model(seed=0)
    one = to_np(attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=1, seed=5)(model, x, y))
    two = to_np(attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=1, seed=5)(model, x, y))
    np.testing.assert_array_equal(one, two)


def _unrelated_random_ops(model, x, y):
    """Draws from every global random state, and from another attack's stream."""
    random.random()
    np.random.rand()
    keras.random.uniform((3,))
    attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=0)(model, x, y)


def test_a_seeded_attack_draws_the_same_first_start_whatever_ran_before():
    x, y = image_batch(seed=13)
    model, _ = conv_bn_model(seed=0)
    keras.utils.set_random_seed(0)
    first = to_np(attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=0, seed=5)(model, x, y))
    keras.utils.set_random_seed(1)
    _unrelated_random_ops(model, x, y)
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=0, seed=5)
    _unrelated_random_ops(model, x, y)
    np.testing.assert_array_equal(to_np(attack(model, x, y)), first)
    assert np.abs(first - x).max() > 0.9 * 8 / 255  # a random start, not x


def test_an_attack_without_a_seed_draws_one_from_the_global_seed_when_made():
    x, y = image_batch(seed=14)
    model, _ = conv_bn_model(seed=0)
    starts = []
    for global_seed, between in ((0, False), (0, True), (1, False)):
        keras.utils.set_random_seed(global_seed)
        attack = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=0)
        if between:  # what runs between making the attack and using it changes nothing
            _unrelated_random_ops(model, x, y)
        starts.append(to_np(attack(model, x, y)))
    np.testing.assert_array_equal(starts[1], starts[0])
    assert np.abs(starts[2] - starts[0]).max() > 1e-3  # another global seed, another drawn seed
    assert attack.get_config()["seed"] is None  # the config keeps "draw one"


def test_schedule_and_copies_keep_the_random_stream():
    x, y = image_batch(seed=15)
    model, _ = conv_bn_model(seed=0)
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=0, schedule={1: {"epsilon": 4 / 255}})
    later = attack.at_epoch(1)
    assert later.epsilon == 4 / 255 and later.seed_generator is attack.seed_generator
    attack(model, x, y)
    copied = copy.deepcopy(attack)  # its own stream, from where the original's is
    assert copied.seed_generator is not attack.seed_generator
    np.testing.assert_array_equal(to_np(copied(model, x, y)), to_np(attack(model, x, y)))


# ---------------------------------------------------------------------------
# Arguments, schedules, config
# ---------------------------------------------------------------------------


def test_parse_epsilon():
    assert attacks.parse_epsilon("8/255") == 8 / 255
    assert attacks.parse_epsilon(" 128/255 ") == 128 / 255
    assert attacks.parse_epsilon("0.031") == 0.031
    assert attacks.parse_epsilon(0.5) == 0.5
    with pytest.raises(ValueError, match="8/255"):
        attacks.parse_epsilon("eight/255")
    with pytest.raises(ValueError, match="epsilon"):
        attacks.parse_epsilon("1/0")
    assert attacks.PGD(epsilon="8/255", step_size="2/255").epsilon == 8 / 255


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -8 / 255}, "epsilon"),
        ({"epsilon": "-8/255"}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"norm": "l1"}, "norm"),
        ({"norm": "linfinity"}, "norm"),
        ({"style": "cleverhans"}, "style"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -0.1}, "step_size"),
        ({"num_steps": -1}, "num_steps"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"loss": "mse"}, "loss"),
        ({"schedule": {100: {"epsilonn": 10 / 255}}}, "epsilonn"),
        ({"schedule": {-1: {"epsilon": 10 / 255}}}, "schedule"),
        ({"schedule": {100: 10 / 255}}, "schedule"),
        ({"schedule": [(100, {"epsilon": 10 / 255})]}, "schedule"),
    ],
)
def test_pgd_bad_arguments_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        attacks.PGD(**kwargs)


def test_other_attacks_bad_arguments_raise():
    with pytest.raises(ValueError, match="epsilon"):
        attacks.FGSM(epsilon=0)
    with pytest.raises(ValueError, match="epsilon"):
        attacks.RandomNoise(epsilon=-0.1)
    with pytest.raises(ValueError, match="Unknown attack parameter"):
        attacks.RandomNoise(schedule={3: {"num_steps": 5}})
    with pytest.raises(ValueError, match="Could not interpret attack"):
        attacks.get("cw")


def test_norm_aliases():
    assert attacks.PGD(norm="l_inf").norm == "linf"
    assert attacks.PGD(norm="L2").norm == "l2"


def test_at_epoch_applies_the_schedule_from_its_epoch_on():
    attack = attacks.PGD("linf", 8 / 255, 2 / 255, 10, schedule={100: {"epsilon": 10 / 255, "num_steps": 12}})
    for epoch in (0, 50, 99):
        early = attack.at_epoch(epoch)
        assert (early.epsilon, early.num_steps, early.step_size) == (8 / 255, 10, 2 / 255)
    for epoch in (100, 101, 199):
        late = attack.at_epoch(epoch)
        assert (late.epsilon, late.num_steps, late.step_size) == (10 / 255, 12, 2 / 255)
        assert (late.norm, late.style, late.random_start, late.loss) == ("linf", "advertorch", True, "ce")
        assert isinstance(late, attacks.PGD)
    # the original is untouched
    assert (attack.epsilon, attack.num_steps) == (8 / 255, 10)
    # later entries add to earlier ones
    staged = attacks.PGD(schedule={100: {"epsilon": 10 / 255}, 150: {"step_size": 1 / 255}})
    s = staged.at_epoch(160)
    assert (s.epsilon, s.step_size) == (10 / 255, 1 / 255)
    assert staged.at_epoch(120).step_size == staged.step_size
    assert attacks.PGD().at_epoch(500).epsilon == 8 / 255


ATTACK_CONFIGS = [
    attacks.PGD("l2", 128 / 255, 32 / 255, 7, random_start=False, style="sotas", training=True, seed=3),
    attacks.PGD("linf", 8 / 255, 2 / 255, 10, schedule={100: {"epsilon": 10 / 255, "num_steps": 12}}),
    attacks.TRADESAttack("linf", 8 / 255, 2 / 255, 10),
    attacks.MARTAttack("l2", 0.5, 0.1, 5, seed=1),
    attacks.FGSM(4 / 255, random_start=True, seed=2),
    attacks.RandomNoise(8 / 255, seed=4),
    attacks.RestartedPGD("linf", 8 / 255, 2 / 255, 20, loss="cw", seed=5, restarts=3),
]


@pytest.mark.parametrize("attack", ATTACK_CONFIGS, ids=lambda a: type(a).__name__)
def test_attack_config_round_trip(attack):
    config = attack.get_config()
    restored = type(attack).from_config(config)
    assert type(restored) is type(attack)
    assert restored.get_config() == config
    for key, value in config.items():
        assert getattr(restored, key) == value, key
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(attack)))
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(attack)
    assert again.get_config() == config  # schedule keys are ints again after JSON
    assert attacks.get(serialized).get_config() == config
    if attack.schedule:
        assert again.at_epoch(100).epsilon == 10 / 255


def test_fgsm_round_trip_keeps_its_shape():
    fgsm = attacks.FGSM(4 / 255)
    again = attacks.FGSM.from_config(fgsm.get_config())
    assert (again.num_steps, again.step_size, again.norm) == (1, 4 / 255, "linf")


def test_bad_value_in_schedule_fails_at_construction():
    with pytest.raises(ValueError, match="epsilon"):
        attacks.PGD(schedule={100: {"epsilon": -1.0}})


# ---------------------------------------------------------------------------
# The CW margin loss and restarts
# ---------------------------------------------------------------------------


def np_cw_loss(y, z, confidence):
    """The reference `cwloss` per sample: `-clamp(z_y - max_{i != y} z_i + confidence, min=0)` (one-hot, -10000 mask)."""
    onehot = np.eye(z.shape[1])[y]
    real = np.sum(onehot * z, axis=1)
    other = np.max((1.0 - onehot) * z - onehot * 10000.0, axis=1)
    return -np.maximum(real - other + confidence, 0.0)


def test_cw_loss_matches_the_reference_formula():
    rng = np.random.default_rng(0)
    z = 30.0 * rng.standard_normal((64, 10))  # margins beyond +-50: the cap is reached
    y = rng.integers(0, 10, 64)
    for confidence in (50.0, 0.0):
        got = to_np(attacks.cw_loss(y, keras.ops.convert_to_tensor(z.astype("float32")), confidence=confidence))
        expected = np_cw_loss(y, z.astype("float32").astype(np.float64), confidence)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
    capped = np_cw_loss(y, z, 50.0) == 0.0
    assert 0 < capped.sum() < len(y)  # both branches of the clamp are exercised
    # Soft labels count as their most likely class.
    soft = 0.1 / 9 * np.ones((64, 10))
    soft[np.arange(64), y] = 0.9
    np.testing.assert_array_equal(
        to_np(attacks.cw_loss(soft, keras.ops.convert_to_tensor(z))),
        to_np(attacks.cw_loss(y, keras.ops.convert_to_tensor(z))),
    )


def cw_sum_grad(x, y, w, b, confidence=attacks.CW_CONFIDENCE):
    """d/dx of sum_i min(max_{j != y_i} z_ij - z_iy - confidence, 0) for z = W^T flat(x) + b."""
    z = linear_logits(x, w, b)
    masked = np.where(np.eye(w.shape[1], dtype=bool)[y], -np.inf, z)
    other = np.argmax(masked, axis=1)
    active = (masked[np.arange(len(y)), other] - z[np.arange(len(y)), y] - confidence) < 0
    return (active[:, None] * (w[:, other] - w[:, y]).T).reshape(x.shape)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_on_the_cw_loss_matches_numpy(norm, monkeypatch):
    x, y, w, b = linear_problem(seed=3)
    eps, step = BUDGETS[norm]
    attack = attacks.PGD(norm, eps, step, 2, random_start=False, loss="cw")
    rec = Recorder(monkeypatch)
    x_adv = to_np(attack(linear_model(w, b), x, y))
    x64 = x.astype(np.float64)
    expected, grads = np_pgd(x64, lambda xa: cw_sum_grad(xa, y, w, b), norm, "advertorch", eps, step, 2)
    if norm == "linf":
        _check_no_sign_ambiguity(grads)
    np.testing.assert_allclose(x_adv, expected, rtol=0, atol=1e-5)
    for xi, loss in zip(rec.inputs, rec.losses):  # the batch loss is the summed CW loss
        np.testing.assert_allclose(loss, np_cw_loss(y, linear_logits(xi, w, b), 50.0).sum(), rtol=1e-5)
    ce_attack = attacks.PGD(norm, eps, step, 2, random_start=False, loss="ce")
    assert not np.allclose(to_np(ce_attack(linear_model(w, b), x, y)), x_adv, atol=1e-5)  # the loss mattered


@float64_precision()
def test_restarts_keep_the_first_fooling_start_else_the_last():
    """In float64: `RestartedPGD(restarts=3)` against three single-start runs of `PGD` drawing the same starts."""
    x, _, w, b = linear_problem(seed=2, batch=32, classes=2, w_scale=0.3)
    model = linear_model(w, b)
    x = x.astype(np.float64)
    y = np.argmax(to_np(model(x)), axis=-1)  # all correct; a short step, so the start decides (0.4 of them flip)
    settings = dict(norm="linf", epsilon=0.2, step_size=0.01, num_steps=1, seed=7)
    single = attacks.PGD(**settings)
    runs = [to_np(single(model, x, y)) for _ in range(3)]  # one stream: the starts of restarts 1, 2, 3
    fooled = np.array([np.argmax(to_np(model(r)), axis=-1) != y for r in runs])
    first = np.where(fooled.any(axis=0), np.argmax(fooled, axis=0), 2)  # first fooling restart, else the last
    expected = np.stack([runs[first[i]][i] for i in range(len(y))])
    # The set-up discriminates: images fooled only by a later start, images no start fools.
    assert (fooled[1:].any(axis=0) & ~fooled[0]).sum() >= 2 and (~fooled.any(axis=0)).sum() >= 2
    x_adv = to_np(attacks.RestartedPGD(**settings, restarts=3)(model, x, y))
    np.testing.assert_allclose(x_adv, expected, rtol=0, atol=1e-12)
    robust = np.argmax(to_np(model(x_adv)), axis=-1) == y
    np.testing.assert_array_equal(robust, ~fooled.any(axis=0))  # robust only if every start fails
    one = attacks.RestartedPGD(**settings, restarts=1)(model, x, y)
    np.testing.assert_allclose(to_np(one), to_np(attacks.PGD(**settings)(model, x, y)), rtol=0, atol=0)


def test_restarted_pgd_arguments():
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match=r"`restarts` must be a positive integer\. Received: restarts="):
            attacks.RestartedPGD(restarts=bad)
    with pytest.warns(UserWarning, match="runs the same attack 3 times; pass random_start=True"):
        attacks.RestartedPGD(random_start=False, restarts=3)
    with pytest.raises(ValueError, match="Unknown attack `loss`"):
        attacks.PGD(loss="margin")
