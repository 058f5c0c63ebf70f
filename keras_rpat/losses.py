"""Adversarial-training losses as composable `keras.losses.Loss` objects.

Every loss is called as `loss(y_true, views)`, where `views` is a dict of logits
computed by `RPATTrainer`, one training-mode forward pass per key:

| key | input | model |
|---|---|---|
| `"clean"` | `x` | online, training mode |
| `"adv"` | `x'` (the attack's output) | online, training mode |
| `"interp"` | `x~ = x + alpha * (x' - x)` | online, training mode |
| `"clean_kl"` | `x` again (TRADES' second clean forward) | online, training mode |
| `"teacher_adv"`, `"teacher_clean"`, `"teacher_interp"` | as above | weight-averaged teacher, no gradient |

A loss declares the keys it needs in `views` (in the reference forward order);
the trainer computes the union, in order of first appearance. Feature proxies
(Table 5) appear as `"<view>:penultimate"` / `"<view>:third_to_last"`.
`call()` returns per-sample values, so Keras reductions and `sample_weight`
apply; the default reduction is the batch mean. Labels may be integers `(B,)`
or soft targets `(B, C)` (CutMix). Nothing is detached except what the trainer
already made constant (attack outputs, teacher logits).

References:
    - Wang & Liu, Failure Cases Are Better Learned But Boundary Says Sorry:
      Facilitating Smooth Perception Change for Accuracy-Robustness Trade-Off
      in Adversarial Training, ICCV 2025 (RPAT).
"""

import keras
from keras import ops

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import attacks as attacks_lib
from keras_rpat import backend as rpat_backend
from keras_rpat._names import ALPHA_SAMPLING
from keras_rpat._names import DISTANCES
from keras_rpat._names import PROXIES
from keras_rpat._names import WA_START_EPOCH  # the start of ReBAT / RPAT++'s BoAT / RPAT++ term and weight averaging
from keras_rpat.attacks import cross_entropy

FORMS = ("reference", "paper")
GRADIENT_VIEWS = ("clean", "adv", "interp", "clean_kl")
TEACHER_VIEWS = ("teacher_clean", "teacher_adv", "teacher_interp")
ALL_VIEWS = GRADIENT_VIEWS + TEACHER_VIEWS
# Which RPATTrainer setting produces each view (named when a loss is called without one).
VIEW_SOURCES = {
    "clean": "the clean forward pass (always)",
    "adv": "the adversarial forward pass (RPATTrainer(attack=...))",
    "interp": "the interpolated forward pass x + alpha (x' - x) (a RobustPerception or RPATPlusPlus loss, with an attack)",
    "clean_kl": "a second clean forward pass in inference mode (TRADES(reuse_clean_forward=False), the default; "
    "TRADES(reuse_clean_forward=True) reads 'clean' instead)",
    "teacher_clean": "the weight-averaged teacher (RPATTrainer(weight_averaging=...))",
    "teacher_adv": "the weight-averaged teacher (RPATTrainer(weight_averaging=...))",
    "teacher_interp": "the weight-averaged teacher (RPATTrainer(weight_averaging=...))",
}


def _labels(y_true, num_classes):
    """Integer labels or soft targets -> (B, C) float targets."""
    if _data_checks.is_soft_labels(y_true.shape, num_classes):
        return ops.cast(y_true, "float32")
    y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(y, num_classes, dtype="float32")


def _is_soft(y_true, num_classes):
    return _data_checks.is_soft_labels(y_true.shape, num_classes)


def _log_softmax(z):
    return ops.log_softmax(z, axis=-1)


# One definition, shared with the TRADES attack.
kl_per_sample = attacks_lib.kl_from_logits


def js_per_sample(u, v, temperature=1.0):
    """Jensen-Shannon divergence of `softmax(u/T)` and `softmax(v/T)` per sample.

    `0.5 [KL(p || m) + KL(q || m)]`, `m = (p + q)/2`, `log m = log(max(m, 1e-8))`
    (Consistency-AT, docs/algorithms.md#methods). Gradient flows through p, q and m.
    """
    log_p = _log_softmax(u / temperature)
    log_q = _log_softmax(v / temperature)
    p = ops.exp(log_p)
    q = ops.exp(log_q)
    log_m = ops.log(ops.maximum((p + q) / 2.0, 1e-8))
    kl_pm = ops.sum(p * (log_p - log_m), axis=-1)
    kl_qm = ops.sum(q * (log_q - log_m), axis=-1)
    return 0.5 * (kl_pm + kl_qm)


def _check_label_smoothing(label_smoothing):
    return _checks.check_range(label_smoothing, "label_smoothing", 0, 1, high_open=True)


def _label_smoothing_config(loss):
    """`{"label_smoothing": eps}` if `eps` > 0, else `{}`: the config of a loss without it is the one it always was."""
    return {"label_smoothing": loss.label_smoothing} if loss.label_smoothing else {}


def smoothed_cross_entropy(y, logits, label_smoothing=0.0):
    """Per-sample cross-entropy with label smoothing, as PyTorch's `F.cross_entropy(label_smoothing=eps)`.

    The target is `(1 - eps) * onehot(y) + eps / C` (soft labels `t`: `(1 - eps) * t + eps / C`), so the
    value is `(1 - eps) * CE(y, z) + eps * mean_c(-log softmax(z)_c)`: the `SmoothCrossEntropyLoss` of
    Wang et al. 2023 (`core/utils/utils.py` of github.com/wzekai99/DM-Improves-AT). `eps = 0` is `CE`.
    """
    ce = cross_entropy(y, logits)
    if not label_smoothing:
        return ce
    uniform = -ops.mean(_log_softmax(logits), axis=-1)
    return (1.0 - label_smoothing) * ce + label_smoothing * uniform


def _flat(z):
    if len(z.shape) > 2:
        return ops.reshape(z, (ops.shape(z)[0], -1))
    return z


class ViewLoss(keras.losses.Loss):
    """Base class: a loss over a dict of views.

    Args:
        start_epoch: the (0-based) epoch from which the term is active; before
            it the trainer neither adds it nor computes views only it needs.
        reduction: Keras reduction of the per-sample values
            (`"sum_over_batch_size"`, the batch mean, by default).
        name: name of the term in the training logs.
        dtype: dtype of the loss computation.
    """

    #: views needed, in the reference forward order
    views = ()
    #: the proxy the views must carry (`"logits"` for plain logits)
    proxy = "logits"

    def __init__(self, start_epoch=0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(start_epoch, bool) or int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"`start_epoch` must be a non-negative integer. Received: start_epoch={start_epoch!r}")
        self.start_epoch = int(start_epoch)

    @property
    def required_views(self):
        return tuple(self.views)

    def __call__(self, y_true, views, sample_weight=None):
        self.check_views(views)
        return super().__call__(y_true, views, sample_weight=sample_weight)

    def check_views(self, views):
        """Raises a `ValueError` naming the missing keys of `views` and the trainer setting producing each."""
        name = f"{type(self).__name__} ({self.name!r})"
        if not isinstance(views, dict):
            raise ValueError(
                f"{name} takes a dict of views {{view name: logits}}, such as {{'clean': z, 'adv': z_adv}}, "
                f"not a {type(views).__name__}. It needs the views {list(self.required_views)}; "
                "RPATTrainer builds them, or pass the dict yourself."
            )
        keys = [self.feature_key(v) for v in self.required_views]
        missing = [k for k in keys if k not in views]
        if missing:
            sources = "; ".join(f"{k!r}: {VIEW_SOURCES.get(k.split(':')[0], 'unknown view')}" for k in missing)
            raise ValueError(
                f"{name} needs the views {keys}; missing {missing} (received keys {sorted(views)}). "
                f"Produced by: {sources}. Train through RPATTrainer with that setting, or pass the missing keys."
            )

    def feature_key(self, view):
        """The `views` key this loss reads for `view` (depends on `proxy`)."""
        return view if self.proxy == "logits" else f"{view}:{self.proxy}"

    def get_config(self):
        config = super().get_config()
        config["start_epoch"] = self.start_epoch
        return config


@keras.saving.register_keras_serializable(package="keras_rpat")
class CrossEntropy(ViewLoss):
    """Cross-entropy on one view: `CE(z(view), y)`.

    With soft labels (CutMix) it is the mixed cross-entropy
    `lam * CE(y_a) + (1 - lam) * CE(y_b)`.

    Args:
        view: which view to classify (`"clean"` for standard training).
        start_epoch, reduction, name, dtype: see `ViewLoss`.
        label_smoothing: float in `[0, 1)`: the target becomes
            `(1 - eps) * onehot(y) + eps / C`, as PyTorch's
            `F.cross_entropy(label_smoothing=eps)` (`smoothed_cross_entropy`;
            0.1 in Wang et al. 2023). Defaults to `0.0`.
    """

    def __init__(
        self, view="clean", start_epoch=0, reduction="sum_over_batch_size", name=None, dtype=None, label_smoothing=0.0
    ):
        if view not in GRADIENT_VIEWS:
            raise ValueError(f"Unknown `view`: {view!r}. Expected one of {GRADIENT_VIEWS}.")
        self.view = view
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        super().__init__(start_epoch, reduction, name or f"ce_{view}", dtype)

    @property
    def required_views(self):
        return (self.view,)

    def call(self, y_true, views):
        return smoothed_cross_entropy(y_true, views[self.view], self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "view": self.view, **_label_smoothing_config(self)}


@keras.saving.register_keras_serializable(package="keras_rpat")
class AdversarialCrossEntropy(CrossEntropy):
    """PGD-AT (Madry et al.): `CE(z(x'), y)`.

    Args:
        start_epoch, reduction, name, dtype: see `ViewLoss`.
        label_smoothing: see `CrossEntropy`.

    Example:

    ```python
    loss = keras_rpat.losses.AdversarialCrossEntropy()
    value = loss(y, {"adv": adv_logits})
    ```
    """

    def __init__(
        self, start_epoch=0, reduction="sum_over_batch_size", name="adv_ce", dtype=None, view="adv", label_smoothing=0.0
    ):
        super().__init__(
            view=view,
            start_epoch=start_epoch,
            reduction=reduction,
            name=name,
            dtype=dtype,
            label_smoothing=label_smoothing,
        )


@keras.saving.register_keras_serializable(package="keras_rpat")
class TRADES(ViewLoss):
    """TRADES: `CE(z1(x), y) + beta * KL(p2(x) || p(x'))`.

    Per sample: `-log p_y(z1(x)) + beta * sum_c p2_c (log p2_c - log p_c(x'))`;
    the batch mean gives PyTorch's `batchmean` KL. As in the reference code the
    KL target `p2` comes from a **second** training-mode clean forward
    (`"clean_kl"`, same values, its own BatchNorm update); gradient flows
    through it. `reuse_clean_forward=True` uses the first clean forward
    instead (docs/algorithms.md#trades-second-clean-forward).

    Args:
        beta: weight of the KL term (6.0).
        reuse_clean_forward: skip the second clean forward.
        start_epoch, reduction, name, dtype: see `ViewLoss`.
        label_smoothing: of the clean CE term (the KL term is not smoothed),
            as Wang et al. 2023's `trades_loss`; see `CrossEntropy`.

    References:
        - Zhang et al., Theoretically Principled Trade-off between Robustness
          and Accuracy, ICML 2019.
    """

    def __init__(
        self,
        beta=6.0,
        reuse_clean_forward=False,
        start_epoch=0,
        reduction="sum_over_batch_size",
        name="trades",
        dtype=None,
        label_smoothing=0.0,
    ):
        super().__init__(start_epoch, reduction, name, dtype)
        self.beta = _checks.check_range(beta, "beta", low=0)
        self.reuse_clean_forward = bool(reuse_clean_forward)
        self.label_smoothing = _check_label_smoothing(label_smoothing)

    @property
    def required_views(self):
        return ("clean", "adv") if self.reuse_clean_forward else ("clean", "adv", "clean_kl")

    def call(self, y_true, views):
        target = views["clean"] if self.reuse_clean_forward else views["clean_kl"]
        natural = smoothed_cross_entropy(y_true, views["clean"], self.label_smoothing)
        return natural + self.beta * kl_per_sample(target, views["adv"])

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.beta,
            "reuse_clean_forward": self.reuse_clean_forward,
            **_label_smoothing_config(self),
        }


@keras.saving.register_keras_serializable(package="keras_rpat")
class MART(ViewLoss):
    """MART: boosted CE on `x'` plus a misclassification-weighted KL.

    Per sample `i` (docs/algorithms.md#methods):

        CE(z(x'), y) - log(1.0001 - p_{y^}(x') + 1e-12)
          + beta * [sum_c p_c(x) (log p_c(x) - log(p_c(x') + 1e-12))] * (1.0000001 - p_y(x))

    with `y^` the most probable class of `p(x')` other than `y`. The weight
    `1.0000001 - p_y(x)` is not detached. Needs integer labels.

    Args:
        beta: weight of the KL term (6.0).
        start_epoch, reduction, name, dtype: see `ViewLoss`.
        label_smoothing: of the `CE(z(x'), y)` term only (the margin and KL
            terms are not smoothed); see `CrossEntropy`.

    References:
        - Wang et al., Improving Adversarial Robustness Requires Revisiting
          Misclassified Examples, ICLR 2020.
    """

    views = ("clean", "adv")

    def __init__(
        self, beta=6.0, start_epoch=0, reduction="sum_over_batch_size", name="mart", dtype=None, label_smoothing=0.0
    ):
        super().__init__(start_epoch, reduction, name, dtype)
        self.beta = _checks.check_range(beta, "beta", low=0)
        self.label_smoothing = _check_label_smoothing(label_smoothing)

    def call(self, y_true, views):
        z_clean, z_adv = views["clean"], views["adv"]
        num_classes = z_adv.shape[-1]
        if _is_soft(y_true, num_classes):
            raise ValueError(
                "MART needs integer class labels; it received soft labels (CutMix). "
                "Use AdversarialCrossEntropy or TRADES with CutMix."
            )
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        onehot = ops.one_hot(y, num_classes, dtype=z_adv.dtype)
        adv_probs = ops.softmax(z_adv, axis=-1)
        # Highest-probability wrong class: top-2, take the second if the first is y.
        _, top2 = ops.top_k(adv_probs, k=2)
        first, second = top2[:, 0], top2[:, 1]
        new_y = ops.where(ops.equal(first, y), second, first)
        p_new = ops.sum(adv_probs * ops.one_hot(new_y, num_classes, dtype=z_adv.dtype), axis=-1)
        loss_adv = smoothed_cross_entropy(y, z_adv, self.label_smoothing) - ops.log(1.0001 - p_new + 1e-12)
        nat_log = _log_softmax(z_clean)
        nat_probs = ops.exp(nat_log)
        true_probs = ops.sum(nat_probs * onehot, axis=-1)
        kl = ops.sum(nat_probs * (nat_log - ops.log(adv_probs + 1e-12)), axis=-1)
        return loss_adv + self.beta * kl * (1.0000001 - true_probs)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, **_label_smoothing_config(self)}


@keras.saving.register_keras_serializable(package="keras_rpat")
class Consistency(ViewLoss):
    """Consistency-AT: `weight * JS_T(z(x'_1), z(x'_2))` of two augmented views.

    The batch is the concatenation `[aug1(x); aug2(x)]` (a `two_view` data
    pipeline), attacked as one batch with labels `[y; y]`; the adversarial
    logits are split in halves. Per-sample values are the pair's JS repeated
    for both halves, so the batch mean equals the reference's `batchmean` over
    pairs. Combine with `AdversarialCrossEntropy` (the `consistency_at`
    preset).

    Args:
        weight: lambda (1.0).
        temperature: T (0.5).
        start_epoch, reduction, name, dtype: see `ViewLoss`.

    References:
        - Tack et al., Consistency Regularization for Adversarial Robustness,
          AAAI 2022.
    """

    views = ("adv",)

    def __init__(
        self,
        weight=1.0,
        temperature=0.5,
        start_epoch=0,
        reduction="sum_over_batch_size",
        name="consistency",
        dtype=None,
    ):
        super().__init__(start_epoch, reduction, name, dtype)
        self.weight = _checks.check_range(weight, "weight", low=0)
        self.temperature = _checks.check_range(temperature, "temperature", low=0, low_open=True)

    def call(self, y_true, views):
        n = views["adv"].shape[0]
        if n is not None and n % 2:
            raise ValueError(
                "Consistency needs a two-view batch [aug1(x); aug2(x)] of even size; "
                f"received {n} samples. Build the data with "
                "keras_rpat.datasets.make_datasets(..., two_view=True)."
            )
        z1, z2 = ops.split(views["adv"], 2, axis=0)
        js = js_per_sample(z1, z2, self.temperature)
        return self.weight * ops.concatenate([js, js], axis=0)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="keras_rpat")
class RobustPerception(ViewLoss):
    """The RPAT term: make perception change linearly between `x` and `x'`.

    With `x~ = x + alpha * (x' - x)` (paper convention: `alpha` weights the
    perturbation) and `target = (1 - alpha) z(x) + alpha z(x')`:

    - `form="reference"` (default, the authors' code):
      `weight * mean_c (z(x~) - target)^2` per sample; the batch mean is
      PyTorch's `MSELoss` over all B*C elements. Gradient flows into
      `z(x~)`, `z(x)` and `z(x')` (the target is not detached).
    - `form="paper"` (Eq. 3): the ratio form
      `(z(x~)-z(x))/alpha - (z(x')-z(x~))/(1-alpha)`, which equals the
      reference residual divided by `alpha (1 - alpha)`, so the value is
      `reference / (alpha (1 - alpha))^2` (x16 at alpha = 0.5).

    `distance` (Figure 4a): `"mse"`; `"kl"` = `KL(softmax(target) ||
    softmax(z(x~)))`; `"js"` = JS with T = 1; `"cosine"` = `1 - cos`.
    `alpha_sampling` (Figure 4b): `"fixed"`; `"beta-"` / `"beta+"` draw one
    `b ~ Beta(0.75, 0.75)` per batch and put `x~` near `x'` (`alpha =
    max(b, 1-b)`) or near `x` (`alpha = min(b, 1-b)`). The figure's labels are
    the code's benign weights `r = 1 - alpha`: its "0.2" is `alpha=0.8` here.
    `proxy` (Table 5): compare logits, the pooled penultimate feature, or the
    flattened third-to-last stage.

    Args:
        alpha: interpolation weight on the perturbation (0.5).
        weight: lambda (1.0).
        distance: `"mse"`, `"kl"`, `"js"` or `"cosine"`.
        alpha_sampling: `"fixed"`, `"beta-"` or `"beta+"`.
        proxy: `"logits"`, `"penultimate"` or `"third_to_last"`.
        form: `"reference"` or `"paper"`.
        start_epoch, reduction, name, dtype: see `ViewLoss`.

    Example:

    ```python
    losses = [keras_rpat.losses.TRADES(beta=6.0),
              keras_rpat.losses.RobustPerception(alpha=0.5)]
    ```
    """

    views = ("adv", "interp", "clean")

    def __init__(
        self,
        alpha=0.5,
        weight=1.0,
        distance="mse",
        alpha_sampling="fixed",
        proxy="logits",
        form="reference",
        start_epoch=0,
        reduction="sum_over_batch_size",
        name="rpat",
        dtype=None,
    ):
        super().__init__(start_epoch, reduction, name, dtype)
        alpha = _checks.check_range(alpha, "alpha", 0, 1, low_open=True, high_open=True)
        for arg, value, valid in (
            ("distance", distance, DISTANCES),
            ("alpha_sampling", alpha_sampling, ALPHA_SAMPLING),
            ("proxy", proxy, PROXIES),
            ("form", form, FORMS),
        ):
            if value not in valid:
                raise ValueError(f"Unknown `{arg}`: {value!r}. Expected one of {valid}.")
        self.alpha = alpha
        self.weight = _checks.check_range(weight, "weight", low=0)
        self.distance = distance
        self.alpha_sampling = alpha_sampling
        self.proxy = proxy
        self.form = form

    def interpolation_alpha(self, seed_generator):
        """The `alpha` of this batch (a Python float or a scalar tensor)."""
        if self.alpha_sampling == "fixed":
            return self.alpha
        b = rpat_backend.random_beta(0.75, 0.75, seed=seed_generator)
        near = ops.maximum(b, 1.0 - b)
        return near if self.alpha_sampling == "beta-" else 1.0 - near

    def call(self, y_true, views):
        alpha = views.get("interp_alpha", self.alpha)
        z_i = _flat(views[self.feature_key("interp")])
        z_c = _flat(views[self.feature_key("clean")])
        z_a = _flat(views[self.feature_key("adv")])
        target = (1.0 - alpha) * z_c + alpha * z_a
        if self.distance == "mse":
            value = ops.mean(ops.square(z_i - target), axis=-1)
            if self.form == "paper":
                value = value / ops.square(alpha * (1.0 - alpha))
        elif self.distance == "kl":
            value = kl_per_sample(target, z_i)
        elif self.distance == "js":
            value = js_per_sample(z_i, target, 1.0)
        else:
            num = ops.sum(z_i * target, axis=-1)
            den = ops.maximum(
                ops.sqrt(ops.sum(ops.square(z_i), axis=-1)) * ops.sqrt(ops.sum(ops.square(target), axis=-1)),
                1e-8,
            )
            value = 1.0 - num / den
        return self.weight * value

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "weight": self.weight,
            "distance": self.distance,
            "alpha_sampling": self.alpha_sampling,
            "proxy": self.proxy,
            "form": self.form,
        }


class _GuardedTeacherLoss(ViewLoss):
    """A teacher-student KL term, skipped (zero) when NaN or >= 1e10.

    The reference adds `beta * R` only `if R < 1e10` (docs/algorithms.md#boat-weight), where
    `R` is the batch value. The check is done with tensor ops, not a Python
    branch, so the step stays capturable.
    """

    def __init__(self, beta=1.0, start_epoch=WA_START_EPOCH, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(start_epoch, reduction, name, dtype)
        self.beta = _checks.check_range(beta, "beta", low=0)

    def _guarded_kl(self, teacher, student):
        # Decide without gradient, then recompute from a cleaned-up (constant)
        # teacher: masking a NaN term with `where` alone would still send
        # 0 * NaN = NaN back through the KL.
        batch_value = ops.stop_gradient(ops.mean(kl_per_sample(teacher, student)))
        ok = ops.logical_and(ops.isfinite(batch_value), batch_value < 1e10)
        teacher = ops.where(ok, teacher, ops.zeros_like(teacher))
        return self.beta * ops.where(ok, kl_per_sample(teacher, student), 0.0)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_rpat")
class BoAT(_GuardedTeacherLoss):
    """ReBAT's BoAT term: `beta * KL(softmax(z_wa(x')) || softmax(z(x')))`.

    The teacher is the weight-averaged model (no gradient); the student is the
    online model's adversarial logits. Active from `start_epoch` (105, the WA
    warm-up of docs/algorithms.md#rebat); skipped when NaN or >= 1e10.

    Args:
        beta: weight (1.0).
        start_epoch: first active (0-based) epoch (105).
        reduction, name, dtype: see `ViewLoss`.

    References:
        - Wang et al., Balance, Imbalance, and Rebalance: Understanding Robust
          Overfitting from a Minimax Game Perspective, NeurIPS 2023 (ReBAT).
    """

    views = ("adv", "teacher_adv")

    def __init__(self, beta=1.0, start_epoch=WA_START_EPOCH, reduction="sum_over_batch_size", name="boat", dtype=None):
        super().__init__(beta, start_epoch, reduction, name, dtype)

    def call(self, y_true, views):
        return self._guarded_kl(views["teacher_adv"], views["adv"])


@keras.saving.register_keras_serializable(package="keras_rpat")
class RPATPlusPlus(_GuardedTeacherLoss):
    """The RPAT++ term, which replaces BoAT in ReBAT (docs/algorithms.md#rpat-plus-plus).

        R = KL( softmax(z_wa(x + a d) - (1 - a) z_wa(x)) || softmax(a z(x')) )

    The teacher's logits on the interpolation minus its scaled benign logits
    approximate `a z(x')`; the student is the online adversarial logits scaled
    by `a` (temperature `1/a`). Only `z(x')` receives gradient.

    Args:
        beta: weight (1.0).
        alpha: `a`, the interpolation weight on the perturbation (0.5).
        start_epoch: first active (0-based) epoch (105).
        reduction, name, dtype: see `ViewLoss`.
    """

    views = ("adv", "teacher_clean", "teacher_interp")

    def __init__(
        self,
        beta=1.0,
        alpha=0.5,
        start_epoch=WA_START_EPOCH,
        reduction="sum_over_batch_size",
        name="rpat_pp",
        dtype=None,
    ):
        super().__init__(beta, start_epoch, reduction, name, dtype)
        alpha = _checks.check_range(alpha, "alpha", 0, 1, low_open=True, high_open=True)
        self.alpha = alpha

    def interpolation_alpha(self, seed_generator):
        return self.alpha

    def call(self, y_true, views):
        a = self.alpha
        teacher = views["teacher_interp"] - (1.0 - a) * views["teacher_clean"]
        return self._guarded_kl(teacher, a * views["adv"])

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


def get(identifier):
    """Returns a loss from an instance, a config dict or a class name."""
    if isinstance(identifier, ViewLoss):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str):
        classes = {c.__name__.lower(): c for c in _CLASSES}
        key = identifier.lower()
        if key in classes:
            return classes[key]()
    raise ValueError(
        f"Could not interpret loss: {identifier!r}. Expected a keras_rpat.losses.ViewLoss "
        f"or one of {[c.__name__ for c in _CLASSES]}."
    )


_CLASSES = (CrossEntropy, AdversarialCrossEntropy, TRADES, MART, Consistency, RobustPerception, BoAT, RPATPlusPlus)
