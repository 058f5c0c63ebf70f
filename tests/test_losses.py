"""Tests of `keras_rpat.losses` against independent NumPy (float64) references.

Every expected value below is computed in this file from the formulas of
docs/algorithms.md#methods (and docs/algorithms.md#perception-proxies, #figure4-regularisers for the RPAT ablations), with a hand-written
softmax / log-softmax / KL. Library helpers are never used to build expectations.
"""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import json
import zlib

import keras
import numpy as np
import pytest

from keras_rpat import losses

from testing import BACKEND  # noqa: E402
from testing import float64_precision  # noqa: E402
from testing import np_ce  # noqa: E402
from testing import np_log_softmax  # noqa: E402
from testing import np_softmax  # noqa: E402
from testing import to_np  # noqa: E402


# ---------------------------------------------------------------------------
# NumPy float64 reference implementations (docs/algorithms.md#notation, #methods)
# ---------------------------------------------------------------------------


def np_kl(target_logits, logits):
    """Per-sample sum_c t_c (log t_c - log q_c), t = softmax(target), q = softmax(logits)."""
    log_t = np_log_softmax(target_logits)
    return np.sum(np.exp(log_t) * (log_t - np_log_softmax(logits)), axis=-1)


def np_js(u, v, temperature):
    """docs/algorithms.md#methods JS_T with log m = log(clamp(m, 1e-8)), per sample."""
    log_p = np_log_softmax(np.asarray(u, np.float64) / temperature)
    log_q = np_log_softmax(np.asarray(v, np.float64) / temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    log_m = np.log(np.maximum((p + q) / 2.0, 1e-8))
    return 0.5 * (np.sum(p * (log_p - log_m), -1) + np.sum(q * (log_q - log_m), -1))


def np_mart(y, z_clean, z_adv, beta):
    """docs/algorithms.md#methods MART, per sample, written with an explicit loop over samples."""
    y = np.asarray(y).astype(int).reshape(-1)
    p_adv = np_softmax(z_adv)
    p_nat = np_softmax(z_clean)
    log_p_nat = np_log_softmax(z_clean)
    out = []
    for i in range(len(y)):
        wrong = [c for c in range(p_adv.shape[1]) if c != y[i]]
        y_hat = wrong[int(np.argmax(p_adv[i, wrong]))]
        boosted = -np_log_softmax(z_adv[i : i + 1])[0, y[i]] - np.log(1.0001 - p_adv[i, y_hat] + 1e-12)
        kl = np.sum(p_nat[i] * (log_p_nat[i] - np.log(p_adv[i] + 1e-12)))
        out.append(boosted + beta * kl * (1.0000001 - p_nat[i, y[i]]))
    return np.array(out)


def np_flat(z):
    z = np.asarray(z, np.float64)
    return z.reshape(z.shape[0], -1)


def np_rp(clean, adv, interp, alpha, weight=1.0, distance="mse", form="reference"):
    """RPAT term per sample: target = (1 - alpha) z(x) + alpha z(x') (paper alpha)."""
    zc, za, zi = np_flat(clean), np_flat(adv), np_flat(interp)
    target = (1.0 - alpha) * zc + alpha * za
    if distance == "mse":
        value = np.mean((zi - target) ** 2, axis=-1)
        if form == "paper":
            # paper residual [(zi - zc)/a - (za - zi)/(1 - a)], squared, mean over C
            paper = (zi - zc) / alpha - (za - zi) / (1.0 - alpha)
            value = np.mean(paper**2, axis=-1)
    elif distance == "kl":
        value = np_kl(target, zi)
    elif distance == "js":
        value = np_js(zi, target, 1.0)
    elif distance == "cosine":
        num = np.sum(zi * target, -1)
        den = np.maximum(np.linalg.norm(zi, axis=-1) * np.linalg.norm(target, axis=-1), 1e-8)
        value = 1.0 - num / den
    else:
        raise AssertionError(distance)
    return weight * value


def np_guard(per_sample, beta):
    r = np.mean(per_sample)  # batchmean KL, the reference's `R`
    if not (np.isfinite(r) and r < 1e10):
        return np.zeros_like(per_sample)
    return beta * per_sample


def np_boat(teacher_adv, adv, beta):
    return np_guard(np_kl(teacher_adv, adv), beta)


def np_rpatpp(teacher_clean, teacher_interp, adv, alpha, beta):
    teacher = np.asarray(teacher_interp, np.float64) - (1.0 - alpha) * np.asarray(teacher_clean, np.float64)
    return np_guard(np_kl(teacher, alpha * np.asarray(adv, np.float64)), beta)


# ---------------------------------------------------------------------------
# Backend helpers
# ---------------------------------------------------------------------------


def value_and_grads(loss, y, views, wrt, sample_weight=None):
    """Loss value and d loss / d views[k] for k in `wrt` with the backend's autodiff (views in floatx).

    A view that receives no gradient at all is reported as `None`.
    """
    if BACKEND == "torch":
        import torch

        tensors = {
            k: (
                torch.tensor(np.asarray(v, keras.config.floatx()), requires_grad=k in wrt)
                if isinstance(v, np.ndarray)
                else v
            )
            for k, v in views.items()
        }
        out = loss(y, tensors, sample_weight=sample_weight)
        grads = torch.autograd.grad(out, [tensors[k] for k in wrt], allow_unused=True)
        grads = [None if g is None else g.detach().numpy().astype(np.float64) for g in grads]
        return float(out.detach()), dict(zip(wrt, grads))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = {
            k: (tf.constant(np.asarray(v, keras.config.floatx())) if isinstance(v, np.ndarray) else v)
            for k, v in views.items()
        }
        with tf.GradientTape() as tape:
            for k in wrt:
                tape.watch(tensors[k])
            out = loss(y, tensors, sample_weight=sample_weight)
        grads = tape.gradient(out, [tensors[k] for k in wrt])
        grads = [None if g is None else g.numpy().astype(np.float64) for g in grads]
        return float(out.numpy()), dict(zip(wrt, grads))
    if BACKEND == "jax":
        import jax

        # JAX gives an unused input a zero gradient (not `None`).
        def fn(differentiated):
            tensors = {k: differentiated.get(k, v) for k, v in views.items()}
            return loss(y, tensors, sample_weight=sample_weight)

        differentiated = {k: jax.numpy.asarray(np.asarray(views[k], keras.config.floatx())) for k in wrt}
        out, grads = jax.value_and_grad(fn)(differentiated)
        return float(out), {k: np.asarray(grads[k], np.float64) for k in wrt}
    pytest.skip(f"no autodiff helper for backend {BACKEND}")


def fd_grad(fn, views, key, h=1e-6):
    """Central finite differences (float64) of the scalar `fn(views)` w.r.t. views[key].

    Accurate to ~1e-9 (truncation h**2, rounding 1e-16 / h): compared with the library's
    gradient computed in float64 (`float64_precision`) at rtol 1e-6, atol 1e-8."""
    base = {k: (np.asarray(v, np.float64) if isinstance(v, np.ndarray) else v) for k, v in views.items()}
    x = base[key]
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (fn({**base, key: plus}) - fn({**base, key: minus})) / (2 * h)
    return grad


def f32(a):
    """Float32 values (what the library sees), held as float64 for the reference."""
    return np.asarray(a, np.float32)


# ---------------------------------------------------------------------------
# The case table: (factory, views builder, NumPy per-sample reference)
# ---------------------------------------------------------------------------


def _logits(rng, b, c, scale):
    return f32(scale * rng.standard_normal((b, c)))


def _views(*keys):
    def build(rng, b, c, scale):
        return {k: _logits(rng, b, c, scale) for k in keys}

    return build


def _int_labels(rng, b, c):
    return rng.integers(0, c, size=b)


def _soft_labels(rng, b, c):
    ya, yb = rng.integers(0, c, size=b), rng.integers(0, c, size=b)
    lam = float(rng.uniform(0.05, 0.95))
    soft = lam * np.eye(c)[ya] + (1 - lam) * np.eye(c)[yb]
    return f32(soft), (ya, yb, lam)


def _build_ce(view, soft=False):
    def build(rng, b, c, scale):
        views = _views(view, "adv" if view != "adv" else "clean")(rng, b, c, scale)
        if soft:
            y, meta = _soft_labels(rng, b, c)
        else:
            y, meta = _int_labels(rng, b, c), None
        return y, views, meta

    return build


def _build_plain(*keys, extra=None):
    def build(rng, b, c, scale):
        views = _views(*keys)(rng, b, c, scale)
        if extra:
            views.update(extra(rng, b, c, scale))
        return _int_labels(rng, b, c), views, None

    return build


def _build_consistency(rng, b, c, scale):
    return np.concatenate([_int_labels(rng, b, c)] * 2), {"adv": _logits(rng, 2 * b, c, scale)}, None


def _build_features(proxy, shape):
    def build(rng, b, c, scale):
        views = _views("clean", "adv", "interp")(rng, b, c, scale)  # logits: must be ignored
        for v in ("clean", "adv", "interp"):
            views[f"{v}:{proxy}"] = f32(scale * rng.standard_normal((b,) + shape))
        return _int_labels(rng, b, c), views, None

    return build


def _ref_ce(view):
    def ref(y, views, meta):
        if meta is None:
            return np_ce(y, views[view])
        ya, yb, lam = meta
        return lam * np_ce(ya, views[view]) + (1 - lam) * np_ce(yb, views[view])

    return ref


def _ref_consistency(weight, temperature):
    def ref(y, views, meta):
        z = np.asarray(views["adv"], np.float64)
        b = z.shape[0] // 2
        js = weight * np_js(z[:b], z[b:], temperature)
        return np.concatenate([js, js])

    return ref


def _ref_rp(alpha, weight=1.0, distance="mse", form="reference", proxy="logits", view_alpha=None):
    def ref(y, views, meta):
        key = (lambda v: v) if proxy == "logits" else (lambda v: f"{v}:{proxy}")
        a = alpha if view_alpha is None else view_alpha
        return np_rp(views[key("clean")], views[key("adv")], views[key("interp")], a, weight, distance, form)

    return ref


CASES = {
    "ce_clean_int": (lambda **kw: losses.CrossEntropy(**kw), _build_ce("clean"), _ref_ce("clean")),
    "pgd_at_ce_int": (lambda **kw: losses.AdversarialCrossEntropy(**kw), _build_ce("adv"), _ref_ce("adv")),
    "pgd_at_ce_cutmix": (
        lambda **kw: losses.AdversarialCrossEntropy(**kw),
        _build_ce("adv", soft=True),
        _ref_ce("adv"),
    ),
    "trades": (
        lambda **kw: losses.TRADES(beta=6.0, **kw),
        _build_plain("clean", "adv", "clean_kl"),
        lambda y, v, m: np_ce(y, v["clean"]) + 6.0 * np_kl(v["clean_kl"], v["adv"]),
    ),
    "trades_reuse_clean": (
        lambda **kw: losses.TRADES(beta=2.5, reuse_clean_forward=True, **kw),
        _build_plain("clean", "adv", "clean_kl"),  # clean_kl differs and must be ignored
        lambda y, v, m: np_ce(y, v["clean"]) + 2.5 * np_kl(v["clean"], v["adv"]),
    ),
    "mart": (
        lambda **kw: losses.MART(beta=6.0, **kw),
        _build_plain("clean", "adv"),
        lambda y, v, m: np_mart(y, v["clean"], v["adv"], 6.0),
    ),
    "consistency": (lambda **kw: losses.Consistency(**kw), _build_consistency, _ref_consistency(1.0, 0.5)),
    "consistency_w2_t1": (
        lambda **kw: losses.Consistency(weight=2.0, temperature=1.0, **kw),
        _build_consistency,
        _ref_consistency(2.0, 1.0),
    ),
    "rp_mse": (
        lambda **kw: losses.RobustPerception(**kw),
        _build_plain("adv", "interp", "clean"),
        _ref_rp(0.5),
    ),
    "rp_mse_paper_a02_w15": (
        lambda **kw: losses.RobustPerception(alpha=0.2, weight=1.5, form="paper", **kw),
        _build_plain("adv", "interp", "clean"),
        _ref_rp(0.2, 1.5, form="paper"),
    ),
    "rp_view_alpha_paper": (
        lambda **kw: losses.RobustPerception(alpha=0.5, form="paper", **kw),
        _build_plain("adv", "interp", "clean", extra=lambda *a: {"interp_alpha": 0.8}),
        _ref_rp(None, form="paper", view_alpha=0.8),
    ),
    "rp_kl": (
        lambda **kw: losses.RobustPerception(alpha=0.3, distance="kl", **kw),
        _build_plain("adv", "interp", "clean"),
        _ref_rp(0.3, distance="kl"),
    ),
    "rp_js": (
        lambda **kw: losses.RobustPerception(alpha=0.3, distance="js", weight=0.7, **kw),
        _build_plain("adv", "interp", "clean"),
        _ref_rp(0.3, 0.7, distance="js"),
    ),
    "rp_cosine": (
        lambda **kw: losses.RobustPerception(alpha=0.7, distance="cosine", **kw),
        _build_plain("adv", "interp", "clean"),
        _ref_rp(0.7, distance="cosine"),
    ),
    "rp_penultimate": (
        lambda **kw: losses.RobustPerception(alpha=0.4, proxy="penultimate", **kw),
        _build_features("penultimate", (7,)),
        _ref_rp(0.4, proxy="penultimate"),
    ),
    "rp_third_to_last_4d": (
        lambda **kw: losses.RobustPerception(alpha=0.5, proxy="third_to_last", **kw),
        _build_features("third_to_last", (3, 2, 4)),
        _ref_rp(0.5, proxy="third_to_last"),
    ),
    "rp_third_to_last_4d_cosine": (
        lambda **kw: losses.RobustPerception(alpha=0.5, proxy="third_to_last", distance="cosine", **kw),
        _build_features("third_to_last", (3, 2, 4)),
        _ref_rp(0.5, distance="cosine", proxy="third_to_last"),
    ),
    "boat": (
        lambda **kw: losses.BoAT(beta=2.0, **kw),
        _build_plain("adv", "teacher_adv"),
        lambda y, v, m: np_boat(v["teacher_adv"], v["adv"], 2.0),
    ),
    "rpatpp": (
        lambda **kw: losses.RPATPlusPlus(beta=1.5, **kw),
        _build_plain("adv", "teacher_clean", "teacher_interp"),
        lambda y, v, m: np_rpatpp(v["teacher_clean"], v["teacher_interp"], v["adv"], 0.5, 1.5),
    ),
    "rpatpp_a03": (
        lambda **kw: losses.RPATPlusPlus(beta=1.0, alpha=0.3, **kw),
        _build_plain("adv", "teacher_clean", "teacher_interp"),
        lambda y, v, m: np_rpatpp(v["teacher_clean"], v["teacher_interp"], v["adv"], 0.3, 1.0),
    ),
}

SHAPES = [(1, 2), (4, 10), (6, 100)]
SCALES = [1.0, 40.0]  # 40: extreme logits (|z| up to ~200), stability


def _tol(scale):
    # float32 library vs float64 reference; absolute term ~ a few ulp of the logits
    return dict(rtol=1e-5, atol=2e-6 * scale)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("b,c", SHAPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_numpy(case, b, c, scale):
    factory, build, ref = CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}-{b}-{c}-{scale}".encode()))
    y, views, meta = build(rng, b, c, scale)
    expected = ref(y, views, meta)
    assert np.all(np.isfinite(expected))

    per_sample = to_np(factory(reduction="none")(y, views))
    mean = to_np(factory()(y, views))
    assert per_sample.shape == expected.shape
    assert np.all(np.isfinite(per_sample))
    np.testing.assert_allclose(per_sample, expected, **_tol(scale))
    np.testing.assert_allclose(mean, np.mean(expected), **_tol(scale))


@pytest.mark.parametrize("case", sorted(CASES))
def test_sample_weight_and_reductions_like_keras(case):
    factory, build, ref = CASES[case]
    rng = np.random.default_rng(7)
    y, views, meta = build(rng, 4, 10, 1.0)
    expected = ref(y, views, meta)
    n = expected.shape[0]
    w = f32(rng.uniform(0.0, 2.0, size=n))
    w[0] = 0.0
    tol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(factory()(y, views, sample_weight=w)), np.sum(w * expected) / n, **tol)
    np.testing.assert_allclose(to_np(factory(reduction="sum")(y, views)), np.sum(expected), **tol)
    np.testing.assert_allclose(to_np(factory(reduction="sum")(y, views, sample_weight=w)), np.sum(w * expected), **tol)
    none = to_np(factory(reduction="none")(y, views, sample_weight=w))
    assert none.shape == (n,)
    np.testing.assert_allclose(none, w * expected, **tol)
    np.testing.assert_allclose(
        to_np(factory(reduction="mean_with_sample_weight")(y, views, sample_weight=w)),
        np.sum(w * expected) / np.sum(w),
        **tol,
    )


# ---------------------------------------------------------------------------
# Cross-entropy (PGD-AT), TRADES
# ---------------------------------------------------------------------------


def test_cutmix_soft_labels_are_the_mixed_cross_entropy():
    z = f32([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    lam = 0.3
    ya, yb = np.array([0, 1]), np.array([2, 2])
    soft = f32(lam * np.eye(3)[ya] + (1 - lam) * np.eye(3)[yb])
    expected = lam * np_ce(ya, z) + (1 - lam) * np_ce(yb, z)
    got = to_np(losses.AdversarialCrossEntropy(reduction="none")(soft, {"adv": z}))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # integer labels given as float (Keras casts y_true) or shaped (B, 1)
    got_int = to_np(losses.AdversarialCrossEntropy(reduction="none")(f32(ya)[:, None], {"adv": z}))
    np.testing.assert_allclose(got_int, np_ce(ya, z), rtol=1e-6)


def test_cross_entropy_huge_logits_are_finite():
    z = f32([[1e4, 0.0, -1e4], [-3e4, 3e4, 0.0]])
    y = np.array([1, 0])
    got = to_np(losses.AdversarialCrossEntropy(reduction="none")(y, {"adv": z}))
    np.testing.assert_allclose(got, [1e4, 6e4], rtol=1e-6)


@float64_precision()
def test_trades_kl_target_is_the_second_clean_forward():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 3)
    views = {k: _logits(rng, 3, 5, 1.0) for k in ("clean", "adv", "clean_kl")}
    two = losses.TRADES(beta=6.0)
    one = losses.TRADES(beta=6.0, reuse_clean_forward=True)
    assert two.required_views == ("clean", "adv", "clean_kl")
    assert one.required_views == ("clean", "adv")
    v2, g2 = value_and_grads(two, y, views, ["clean", "adv", "clean_kl"])
    v1, g1 = value_and_grads(one, y, views, ["clean", "adv", "clean_kl"])

    def ref2(v):
        return np.mean(np_ce(y, v["clean"]) + 6.0 * np_kl(v["clean_kl"], v["adv"]))

    def ref1(v):
        return np.mean(np_ce(y, v["clean"]) + 6.0 * np_kl(v["clean"], v["adv"]))

    np.testing.assert_allclose(v2, ref2(views), rtol=1e-5)
    np.testing.assert_allclose(v1, ref1(views), rtol=1e-5)
    assert abs(v1 - v2) > 1e-3  # the two variants are distinguishable here
    # Gradient flows through the KL target (nothing detached, docs/algorithms.md#methods).
    for k in ("clean", "adv", "clean_kl"):
        np.testing.assert_allclose(g2[k], fd_grad(ref2, views, k), rtol=1e-6, atol=1e-8)
    assert np.abs(g2["clean_kl"]).max() > 1e-3
    assert g1["clean_kl"] is None or np.all(g1["clean_kl"] == 0)
    np.testing.assert_allclose(g1["clean"], fd_grad(ref1, views, "clean"), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# MART
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [6.0, 2.0])
def test_mart_highest_wrong_class_top1_is_label_and_not(beta):
    # sample 0: adversarial top class == label -> y^ is the second most probable class
    # sample 1: adversarial top class != label -> y^ is the top class
    z_adv = f32([[3.0, 1.0, 2.0, -1.0], [0.5, 2.5, 1.5, 0.0]])
    z_clean = f32([[2.0, 0.0, 0.0, 0.0], [0.2, -0.3, 1.0, 0.4]])
    y = np.array([0, 2])
    p_adv = np_softmax(z_adv)
    p_nat = np_softmax(z_clean)
    y_hat = np.array([2, 1])  # by inspection of z_adv
    expected = (
        -np_log_softmax(z_adv)[[0, 1], y]
        - np.log(1.0001 - p_adv[[0, 1], y_hat] + 1e-12)
        + beta * np.sum(p_nat * (np.log(p_nat) - np.log(p_adv + 1e-12)), axis=1) * (1.0000001 - p_nat[[0, 1], y])
    )
    np.testing.assert_allclose(np_mart(y, z_clean, z_adv, beta), expected, rtol=1e-12)
    got = to_np(losses.MART(beta=beta, reduction="none")(y, {"clean": z_clean, "adv": z_adv}))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the choice of y^ matters for these values ("always the second class" would differ)
    wrong_choice = -np.log(1.0001 - np.sort(p_adv, axis=1)[:, -2] + 1e-12)
    assert abs(wrong_choice[1] + np.log(1.0001 - p_adv[1, 1] + 1e-12)) > 1e-2


def test_mart_saturated_probabilities_use_the_constants():
    # p_y^(x') == 1 exactly in float32: the 1.0001 and 1e-12 keep the log finite.
    z_adv = f32([[0.0, 200.0, -200.0]])
    z_clean = f32([[300.0, 0.0, 0.0]])  # p_y(x) == 1: weight 1.0000001 - 1
    y = np.array([0])
    got = to_np(losses.MART(beta=6.0, reduction="none")(y, {"clean": z_clean, "adv": z_adv}))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_mart(y, z_clean, z_adv, 6.0), rtol=1e-5)


@float64_precision()
def test_mart_gradient_flows_through_the_weight():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 5, 3)
    views = {"clean": _logits(rng, 3, 5, 1.5), "adv": _logits(rng, 3, 5, 1.5)}

    def ref(v):
        return np.mean(np_mart(y, v["clean"], v["adv"], 6.0))

    value, grads = value_and_grads(losses.MART(), y, views, ["clean", "adv"])
    np.testing.assert_allclose(value, ref(views), rtol=1e-5)
    for k in ("clean", "adv"):
        np.testing.assert_allclose(grads[k], fd_grad(ref, views, k), rtol=1e-6, atol=1e-8)


def test_mart_rejects_soft_labels():
    z = f32(np.zeros((2, 3)))
    soft = f32([[0.5, 0.5, 0.0], [0.0, 0.3, 0.7]])
    with pytest.raises(ValueError, match="integer class labels"):
        losses.MART()(soft, {"clean": z, "adv": z})


# ---------------------------------------------------------------------------
# Consistency-AT
# ---------------------------------------------------------------------------


def test_consistency_pairs_the_two_halves():
    rng = np.random.default_rng(5)
    z = _logits(rng, 6, 4, 2.0)
    loss = losses.Consistency(reduction="none")
    got = to_np(loss(np.zeros(6), {"adv": z}))
    expected = np_js(z[:3], z[3:], 0.5)
    np.testing.assert_allclose(got[:3], expected, rtol=1e-5)
    np.testing.assert_allclose(got[3:], expected, rtol=1e-5)
    # default reduction: batchmean over the B pairs
    np.testing.assert_allclose(to_np(losses.Consistency()(np.zeros(6), {"adv": z})), expected.mean(), rtol=1e-5)
    # pairing is (i, B + i), not (2i, 2i + 1)
    interleaved = np_js(z[0::2], z[1::2], 0.5)
    assert abs(interleaved.mean() - expected.mean()) > 1e-3


@float64_precision()
def test_consistency_log_m_is_clamped_at_1e_8():
    # p_2 = 1e-9, q_2 ~ 1e-26: m_2 = 5e-10 < 1e-8, so the clamp changes the value.
    t = 0.5
    u = f32([[0.0, t * np.log(1e-9)]])
    v = f32([[0.0, -30.0]])
    z = np.concatenate([u, v])
    expected = np_js(u, v, t)

    def unclamped(u, v):
        log_p, log_q = np_log_softmax(u / t), np_log_softmax(v / t)
        p, q = np.exp(log_p), np.exp(log_q)
        log_m = np.log((p + q) / 2)
        return 0.5 * (np.sum(p * (log_p - log_m), -1) + np.sum(q * (log_q - log_m), -1))

    assert abs(unclamped(u, v)[0] - expected[0]) > 0.5 * abs(expected[0])  # the case discriminates
    got = to_np(losses.Consistency(reduction="none")(np.zeros(2), {"adv": z}))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-9)


def test_consistency_extreme_logits_are_finite():
    # softmax(z / 0.5) underflows to exact zeros: without the clamp log(m) = -inf -> NaN.
    z = f32([[300.0, -300.0, 0.0], [-300.0, 300.0, 0.0]])
    got = to_np(losses.Consistency(reduction="none")(np.zeros(2), {"adv": z}))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[0], np_js(z[:1], z[1:], 0.5)[0], rtol=1e-5)
    np.testing.assert_allclose(got[0], np.log(2.0), rtol=1e-5)


@float64_precision()
def test_consistency_gradient_flows_through_p_q_and_m():
    rng = np.random.default_rng(9)
    views = {"adv": _logits(rng, 6, 5, 1.0)}

    def ref(v):
        z = v["adv"]
        return np.mean(np_js(z[:3], z[3:], 0.5))

    value, grads = value_and_grads(losses.Consistency(), np.zeros(6), views, ["adv"])
    np.testing.assert_allclose(value, ref(views), rtol=1e-5)
    np.testing.assert_allclose(grads["adv"], fd_grad(ref, views, "adv"), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# RobustPerception (the RPAT term)
# ---------------------------------------------------------------------------


def _rp_views(seed=0, b=4, c=6, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: _logits(rng, b, c, scale) for k in ("clean", "adv", "interp")}


def test_rp_reference_form_is_elementwise_mean_over_b_times_c():
    v = _rp_views()
    target = 0.5 * v["clean"].astype(np.float64) + 0.5 * v["adv"]
    expected = np.mean((v["interp"] - target) ** 2)  # torch nn.MSELoss()
    got = to_np(losses.RobustPerception()(np.zeros(4), v))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("alpha,factor", [(0.5, 16.0), (0.2, 39.0625), (0.8, 39.0625)])
def test_rp_paper_form_is_reference_over_alpha_one_minus_alpha_squared(alpha, factor):
    v = _rp_views(1)
    ref = to_np(losses.RobustPerception(alpha=alpha)(np.zeros(4), v))
    paper = to_np(losses.RobustPerception(alpha=alpha, form="paper")(np.zeros(4), v))
    np.testing.assert_allclose(paper / ref, factor, rtol=1e-5)
    np.testing.assert_allclose(paper, np.mean(np_rp(v["clean"], v["adv"], v["interp"], alpha, form="paper")), rtol=1e-5)
    # the same with the batch's alpha coming from the trainer ("interp_alpha")
    sampled = losses.RobustPerception(alpha=0.5, form="paper")(np.zeros(4), {**v, "interp_alpha": alpha})
    np.testing.assert_allclose(to_np(sampled), paper, rtol=1e-5)


def test_rp_alpha_weighs_the_perturbation():
    # z(x~) exactly on the line at alpha = 0.2 *from x*: target = 0.8 z(x) + 0.2 z(x').
    rng = np.random.default_rng(2)
    zc, za = _logits(rng, 3, 5, 1.0), _logits(rng, 3, 5, 1.0)
    zi = f32(0.8 * zc.astype(np.float64) + 0.2 * za)
    v = {"clean": zc, "adv": za, "interp": zi}
    near_x = to_np(losses.RobustPerception(alpha=0.2)(np.zeros(3), v))
    flipped = to_np(losses.RobustPerception(alpha=0.8)(np.zeros(3), v))
    assert near_x < 1e-10
    np.testing.assert_allclose(flipped, np.mean((zi - (0.2 * zc.astype(np.float64) + 0.8 * za)) ** 2), rtol=1e-5)
    assert flipped > 1e-2


def test_rp_weight_scales_linearly():
    v = _rp_views(4)
    for distance in ("mse", "kl", "js", "cosine"):
        one = to_np(losses.RobustPerception(distance=distance)(np.zeros(4), v))
        two = to_np(losses.RobustPerception(distance=distance, weight=2.5)(np.zeros(4), v))
        np.testing.assert_allclose(two, 2.5 * one, rtol=1e-6)
        np.testing.assert_allclose(
            one, np.mean(np_rp(v["clean"], v["adv"], v["interp"], 0.5, distance=distance)), rtol=1e-5, atol=1e-7
        )


def test_rp_kl_direction_is_target_to_interpolation():
    v = _rp_views(6, scale=2.0)
    target = 0.5 * v["clean"].astype(np.float64) + 0.5 * v["adv"]
    got = to_np(losses.RobustPerception(distance="kl")(np.zeros(4), v))
    np.testing.assert_allclose(got, np.mean(np_kl(target, v["interp"])), rtol=1e-5)
    assert abs(np.mean(np_kl(v["interp"], target)) - np.mean(np_kl(target, v["interp"]))) > 1e-3


@pytest.mark.parametrize("form", ["reference", "paper"])
def test_rp_gradient_reaches_all_three_views_and_matches_analytic(form):
    alpha, weight = 0.3, 1.7
    v = _rp_views(8, b=3, c=4)
    zc, za, zi = (v[k].astype(np.float64) for k in ("clean", "adv", "interp"))
    n = zi.size
    scale = weight / (alpha * (1 - alpha)) ** 2 if form == "paper" else weight
    residual = zi - (1 - alpha) * zc - alpha * za
    g_interp = scale * 2.0 * residual / n
    expected = {"interp": g_interp, "clean": -(1 - alpha) * g_interp, "adv": -alpha * g_interp}
    loss = losses.RobustPerception(alpha=alpha, weight=weight, form=form)
    value, grads = value_and_grads(loss, np.zeros(3), v, ["clean", "adv", "interp"])
    np.testing.assert_allclose(value, scale * np.mean(residual**2), rtol=1e-5)
    for k in ("clean", "adv", "interp"):
        assert grads[k] is not None and np.abs(grads[k]).max() > 1e-3, f"no gradient into {k!r}"
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("distance", ["kl", "js", "cosine"])
@float64_precision()
def test_rp_other_distances_gradient_matches_finite_differences(distance):
    v = _rp_views(10, b=3, c=4, scale=1.5)

    def ref(views):
        return np.mean(np_rp(views["clean"], views["adv"], views["interp"], 0.4, distance=distance))

    loss = losses.RobustPerception(alpha=0.4, distance=distance)
    value, grads = value_and_grads(loss, np.zeros(3), v, ["clean", "adv", "interp"])
    np.testing.assert_allclose(value, ref(v), rtol=1e-5)
    for k in ("clean", "adv", "interp"):
        np.testing.assert_allclose(grads[k], fd_grad(ref, v, k), rtol=1e-6, atol=1e-8)
        assert np.abs(grads[k]).max() > 1e-4  # the target is not detached


def test_rp_feature_proxy_flattens_feature_maps():
    rng = np.random.default_rng(12)
    views = {k: _logits(rng, 2, 3, 1.0) for k in ("clean", "adv", "interp")}
    for k in ("clean", "adv", "interp"):
        views[f"{k}:third_to_last"] = f32(rng.standard_normal((2, 4, 4, 5)))
    loss = losses.RobustPerception(proxy="third_to_last")
    assert loss.feature_key("interp") == "interp:third_to_last"
    zc, za, zi = (views[f"{k}:third_to_last"].astype(np.float64) for k in ("clean", "adv", "interp"))
    expected = np.mean((zi - 0.5 * zc - 0.5 * za) ** 2)  # mean over B*H*W*C
    np.testing.assert_allclose(to_np(loss(np.zeros(2), views)), expected, rtol=1e-5)
    per = to_np(losses.RobustPerception(proxy="third_to_last", reduction="none")(np.zeros(2), views))
    np.testing.assert_allclose(per, np.mean(((zi - 0.5 * zc - 0.5 * za) ** 2).reshape(2, -1), axis=1), rtol=1e-5)


@pytest.mark.parametrize("sampling", ["beta-", "beta+"])
def test_rp_alpha_sampling_ranges_and_mean(sampling):
    loss = losses.RobustPerception(alpha_sampling=sampling)
    seed = keras.random.SeedGenerator(0)
    draws = np.array([float(to_np(loss.interpolation_alpha(seed))) for _ in range(1000)])
    if sampling == "beta-":
        assert np.all(draws >= 0.5) and np.all(draws < 1.0)
    else:
        assert np.all(draws > 0.0) and np.all(draws <= 0.5)
    assert np.unique(draws).size > 900  # one fresh draw per call
    b = np.random.default_rng(0).beta(0.75, 0.75, size=1_000_000)
    reference = np.maximum(b, 1 - b) if sampling == "beta-" else np.minimum(b, 1 - b)
    # mean: 0.778 (beta-) / 0.222 (beta+); a uniform b would give 0.75 / 0.25
    assert abs(draws.mean() - reference.mean()) < 0.015  # sampling: 1000 draws, sd of the mean 0.005
    # Kolmogorov-Smirnov distance to the Beta(0.75, 0.75)-derived law (uniform b: 0.085)
    grid = np.linspace(0.0, 1.0, 1001)
    ecdf = np.searchsorted(np.sort(draws), grid, side="right") / draws.size
    rcdf = np.searchsorted(np.sort(reference), grid, side="right") / reference.size
    assert np.max(np.abs(ecdf - rcdf)) < 0.06  # sampling: KS 1% critical value for 1000 draws is 0.05
    assert losses.RobustPerception(alpha=0.3).interpolation_alpha(seed) == 0.3


# ---------------------------------------------------------------------------
# BoAT and RPAT++ (teacher KL terms with the NaN / 1e10 guard)
# ---------------------------------------------------------------------------


def test_boat_is_teacher_to_student_kl_batchmean():
    rng = np.random.default_rng(13)
    v = {"adv": _logits(rng, 5, 7, 2.0), "teacher_adv": _logits(rng, 5, 7, 2.0)}
    got = to_np(losses.BoAT(beta=1.0)(np.zeros(5), v))
    np.testing.assert_allclose(got, np.mean(np_kl(v["teacher_adv"], v["adv"])), rtol=1e-5)
    assert abs(np.mean(np_kl(v["adv"], v["teacher_adv"])) - got) > 1e-3  # direction matters here


def test_rpatpp_kl_of_teacher_difference_to_tempered_student():
    rng = np.random.default_rng(14)
    v = {k: _logits(rng, 5, 7, 2.0) for k in ("adv", "teacher_clean", "teacher_interp")}
    a = 0.5
    teacher = v["teacher_interp"].astype(np.float64) - (1 - a) * v["teacher_clean"]
    expected = np.mean(np_kl(teacher, a * v["adv"].astype(np.float64)))
    got = to_np(losses.RPATPlusPlus()(np.zeros(5), v))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert abs(np.mean(np_kl(teacher, v["adv"])) - expected) > 1e-3  # the student is scaled by a


def _guard_cases():
    big = 2e10
    ok = {"teacher_adv": f32([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]), "adv": f32([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])}
    nan = {"teacher_adv": f32([[np.nan, 1.0, 2.0], [1.0, 0.0, -1.0]]), "adv": ok["adv"]}
    inf = {"teacher_adv": f32([[np.inf, 1.0, 2.0], [1.0, 0.0, -1.0]]), "adv": ok["adv"]}
    huge = {"teacher_adv": f32([[big, 0.0, 0.0], [big, 0.0, 0.0]]), "adv": f32([[0.0, big, 0.0], [0.0, big, 0.0]])}
    # one sample above 1e10 but the batch mean (the reference's R) below: kept
    mixed = {
        "teacher_adv": f32([[1.5e10, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        "adv": f32([[0.0, 1.5e10, 0.0], [0.0, 1.0, 0.0]]),
    }
    return {"ok": ok, "nan": nan, "inf": inf, "huge": huge, "mixed": mixed}


@pytest.mark.parametrize("case", ["ok", "nan", "inf", "huge", "mixed"])
def test_boat_guard_skips_nan_or_at_least_1e10(case):
    v = _guard_cases()[case]
    expected = np_boat(v["teacher_adv"], v["adv"], 2.0)
    if case in ("nan", "inf", "huge"):
        assert np.all(expected == 0)
    else:
        assert np.all(expected > 0)
    if case == "mixed":
        assert np_kl(v["teacher_adv"], v["adv"]).max() >= 1e10
    got = to_np(losses.BoAT(beta=2.0, reduction="none")(np.zeros(2), v))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(to_np(losses.BoAT(beta=2.0)(np.zeros(2), v)), expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("case", ["ok", "nan", "huge"])
def test_rpatpp_guard(case):
    g = _guard_cases()[case]
    v = {"teacher_interp": g["teacher_adv"], "teacher_clean": f32(np.zeros_like(g["teacher_adv"])), "adv": g["adv"]}
    # with teacher_clean = 0 and a = 0.5 the term is KL(softmax(t) || softmax(0.5 adv))
    expected = np_rpatpp(v["teacher_clean"], v["teacher_interp"], v["adv"], 0.5, 1.0)
    got = to_np(losses.RPATPlusPlus(reduction="none")(np.zeros(2), v))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert (case == "ok") == bool(np.all(expected > 0))


@pytest.mark.parametrize("cls", ["BoAT", "RPATPlusPlus"])
@pytest.mark.parametrize("case", ["nan", "huge"])
def test_guarded_term_contributes_no_gradient_when_skipped(cls, case):
    """A skipped term must add nothing to the update: zero (finite) gradient.

    The reference does `if R < 1e10: L += beta * R`, so a NaN or huge `R` leaves
    the online model's gradient untouched.
    """
    g = _guard_cases()[case]
    if cls == "BoAT":
        loss, v = losses.BoAT(), {"teacher_adv": g["teacher_adv"], "adv": g["adv"]}
    else:
        loss = losses.RPATPlusPlus()
        v = {"teacher_interp": g["teacher_adv"], "teacher_clean": f32(np.zeros((2, 3))), "adv": g["adv"]}
    value, grads = value_and_grads(loss, np.zeros(2), v, ["adv"])
    assert value == 0.0
    assert grads["adv"] is None or np.all(grads["adv"] == 0.0), grads["adv"]


def test_rpatpp_gradient_only_into_adv_matches_analytic():
    rng = np.random.default_rng(15)
    v = {k: _logits(rng, 4, 6, 1.5) for k in ("adv", "teacher_clean", "teacher_interp")}
    a, beta = 0.4, 1.3
    za = v["adv"].astype(np.float64)
    t = np_softmax(v["teacher_interp"].astype(np.float64) - (1 - a) * v["teacher_clean"])
    expected = beta * a * (np_softmax(a * za) - t) / za.shape[0]
    value, grads = value_and_grads(losses.RPATPlusPlus(beta=beta, alpha=a), np.zeros(4), v, ["adv"])
    np.testing.assert_allclose(grads["adv"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        value, np.mean(np_rpatpp(v["teacher_clean"], v["teacher_interp"], za, a, beta)), rtol=1e-5
    )


def test_boat_gradient_matches_analytic():
    rng = np.random.default_rng(16)
    v = {"adv": _logits(rng, 4, 6, 1.5), "teacher_adv": _logits(rng, 4, 6, 1.5)}
    expected = 2.0 * (np_softmax(v["adv"]) - np_softmax(v["teacher_adv"])) / 4
    _, grads = value_and_grads(losses.BoAT(beta=2.0), np.zeros(4), v, ["adv"])
    np.testing.assert_allclose(grads["adv"], expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------
# Views, config round trip, argument validation
# ---------------------------------------------------------------------------


def test_required_views_follow_the_reference_forward_order():
    assert losses.AdversarialCrossEntropy().required_views == ("adv",)
    assert losses.CrossEntropy().required_views == ("clean",)
    assert losses.MART().required_views == ("clean", "adv")
    assert losses.Consistency().required_views == ("adv",)
    assert losses.RobustPerception().required_views == ("adv", "interp", "clean")
    assert losses.BoAT().required_views == ("adv", "teacher_adv")
    assert losses.RPATPlusPlus().required_views == ("adv", "teacher_clean", "teacher_interp")
    assert losses.BoAT().start_epoch == 105 and losses.RPATPlusPlus().start_epoch == 105


CONFIG_CASES = [
    losses.CrossEntropy(view="clean_kl", start_epoch=3, reduction="sum", name="my_ce"),
    losses.AdversarialCrossEntropy(start_epoch=2),
    losses.TRADES(beta=3.0, reuse_clean_forward=True, start_epoch=1),
    losses.MART(beta=5.0, reduction="none"),
    losses.Consistency(weight=2.0, temperature=0.25),
    losses.RobustPerception(
        alpha=0.3, weight=2.0, distance="js", alpha_sampling="beta+", proxy="third_to_last", form="paper", start_epoch=5
    ),
    losses.BoAT(beta=2.0, start_epoch=10),
    losses.RPATPlusPlus(beta=2.0, alpha=0.4, start_epoch=7),
]


@pytest.mark.parametrize("loss", CONFIG_CASES, ids=lambda l: type(l).__name__)
def test_config_round_trip(loss):
    config = loss.get_config()
    restored = type(loss).from_config(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    for key, value in config.items():
        if key not in ("name", "reduction", "dtype"):
            assert getattr(restored, key) == value, key
    assert restored.name == loss.name and restored.reduction == loss.reduction
    serialized = keras.saving.serialize_keras_object(loss)
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(again) is type(loss)
    assert again.get_config() == config
    assert losses.get(serialized).get_config() == config


def test_non_default_arguments_survive_and_change_the_value():
    v = _rp_views(17)
    loss = losses.RobustPerception(alpha=0.3, weight=2.0, distance="cosine")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    np.testing.assert_allclose(to_np(restored(np.zeros(4), v)), to_np(loss(np.zeros(4), v)), rtol=1e-7)
    np.testing.assert_allclose(
        to_np(loss(np.zeros(4), v)), np.mean(np_rp(v["clean"], v["adv"], v["interp"], 0.3, 2.0, "cosine")), rtol=1e-5
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rp_alpha_outside_open_unit_interval_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        losses.RobustPerception(alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        losses.RPATPlusPlus(alpha=alpha)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"distance": "l1"}, "distance"),
        ({"proxy": "pooled"}, "proxy"),
        ({"form": "ratio"}, "form"),
        ({"alpha_sampling": "uniform"}, "alpha_sampling"),
    ],
)
def test_rp_unknown_options_raise(kwargs, word):
    with pytest.raises(ValueError, match=word) as info:
        losses.RobustPerception(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)  # says what was received


@pytest.mark.parametrize("cls", [type(l) for l in CONFIG_CASES], ids=lambda c: c.__name__)
@pytest.mark.parametrize("start_epoch", [-1, 1.5])
def test_bad_start_epoch_raises(cls, start_epoch):
    with pytest.raises(ValueError, match="start_epoch"):
        cls(start_epoch=start_epoch)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_consistency_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="temperature"):
        losses.Consistency(temperature=temperature)


def test_unknown_view_and_identifier_raise():
    with pytest.raises(ValueError, match="view"):
        losses.CrossEntropy(view="teacher_adv")
    with pytest.raises(ValueError, match="Could not interpret loss"):
        losses.get("focal")
    assert isinstance(losses.get("trades"), losses.TRADES)


def test_consistency_rejects_odd_batches():
    logits = np.zeros((5, 3), "float32")
    with pytest.raises(ValueError, match="two_view"):
        losses.Consistency()(np.zeros(5), {"adv": logits})
