"""Adversarial attacks: `attack(model, x, y) -> x_adv`.

Every attack holds its threat model (`norm`, `epsilon`, `step_size`,
`num_steps`, `random_start`) and no weights. Input gradients come from
`keras_rpat.backend`; everything else is `keras.ops`, so an attack can run
inside a compiled or captured training step (no host synchronisation, no
Python branch on tensor values).

Three reference implementations are reproduced (docs/algorithms.md#attacks) and selected
with `style`:

| style | start | step / projection | used by |
|---|---|---|---|
| `"advertorch"` | L-inf: `U[-eps, eps]`; L2: `u - x` with `u ~ U[0,1]`, scaled to the ball | L-inf: sign step, clamp to ball, clip to box; L2: `g / max(|g|, 1e-6)`, clip to box, then scale into the ball | Bench PGD-AT, Consistency-AT, evaluation |
| `"trades"` | `x + 0.001 * N(0, I)`, not clipped | L-inf: sign step, clamp to ball, clip; L2: `g / (|g| + 1e-8)`, renorm into the ball, clip | TRADES (KL loss) and MART (CE loss) |
| `"sotas"` | L-inf: `U[-eps, eps]`; L2: radius `eps * u`, Gaussian direction; clipped | L-inf: sign step, clamp, clip; L2: `g / (|g| + 1e-10)`, renorm, clip | ReBAT / RPAT++ (with `training=True`) |
"""

import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import backend as rpat_backend
from keras_rpat._checks import NORMS  # noqa: F401  (the norm vocabulary lives in keras_rpat._checks)
from keras_rpat._checks import allow_large_l2_budgets  # noqa: F401  (the limit lives in keras_rpat._checks)
from keras_rpat._checks import canonical_norm as _canonical_norm
from keras_rpat._checks import check_budget as _budget
from keras_rpat._checks import parse_epsilon  # noqa: F401

STYLES = ("advertorch", "trades", "sotas")
ATTACK_LOSSES = ("ce", "kl", "cw")
# The confidence (kappa) of the CW loss in the reference evaluation scripts (CAT, FAT, MART, GAIRAT).
CW_CONFIDENCE = 50.0


def _batch_norms(v):
    """Per-sample L2 norm, shaped to broadcast against `v`."""
    axes = tuple(range(1, len(v.shape)))
    sq = ops.sum(ops.square(v), axis=axes, keepdims=True)
    return ops.sqrt(sq)


def _soft_targets(y, logits):
    """Integer labels (B,) or soft labels (B, C) -> float targets (B, C)."""
    num_classes = logits.shape[-1]
    if _data_checks.is_soft_labels(y.shape, num_classes):
        return ops.cast(y, logits.dtype)
    y = ops.reshape(y, (-1,))
    return ops.one_hot(ops.cast(y, "int32"), num_classes, dtype=logits.dtype)


def cross_entropy(y, logits):
    """Per-sample cross-entropy for integer or soft labels (mixed CE for CutMix)."""
    targets = _soft_targets(y, logits)
    return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)


def kl_from_logits(target_logits, logits):
    """Per-sample `KL(softmax(target) || softmax(logits))` over classes.

    `sum_c p_t (log p_t - log p)`: per-sample `F.kl_div(log_softmax(logits),
    softmax(target), reduction="none").sum(1)`; its batch mean is PyTorch's
    `reduction="batchmean"`.
    """
    log_t = ops.log_softmax(target_logits, axis=-1)
    return ops.sum(ops.exp(log_t) * (log_t - ops.log_softmax(logits, axis=-1)), axis=-1)


def cw_loss(y, logits, confidence=CW_CONFIDENCE):
    """Per-sample Carlini-Wagner margin loss, maximised by `PGD(loss="cw")`.

    `min(max_{i != y} z_i - z_y - confidence, 0)`: the margin of the best other
    class over the label, capped at `confidence`, minus `confidence` (the reference
    `cwloss`: `-clamp(z_y - max_{i != y} z_i + confidence, min=0)`). Its gradient is the
    margin's until the image is misclassified by `confidence` logits. Soft labels
    (CutMix) count as their most likely class.
    """
    num_classes = logits.shape[-1]
    label = ops.argmax(_soft_targets(y, logits), axis=-1)
    is_label = ops.cast(ops.one_hot(label, num_classes), "bool")
    other = ops.max(ops.where(is_label, ops.full_like(logits, -np.inf), logits), axis=-1)
    real = ops.sum(ops.where(is_label, logits, ops.zeros_like(logits)), axis=-1)
    return ops.minimum(other - real - confidence, 0.0)


# The batch loss PGD maximises for a `loss` of logits and labels (the reference reductions).
_LABEL_LOSSES = {
    "ce": lambda y, logits: ops.mean(cross_entropy(y, logits)),
    "cw": lambda y, logits: ops.sum(cw_loss(y, logits)),
}


def _check_call(model, x, y):
    """Checks of `attack(model, x, y)` (eager, the user's entry): images, labels, a softmax model.

    NumPy images and labels are checked in full (pixels in [0, 1], labels within
    the model's classes); tensors by their dtype; both by their lengths.
    """
    if isinstance(x, np.ndarray):
        fmt = _data_checks.infer_data_format(model) if isinstance(model, keras.Model) else None
        _data_checks.validate_images(x, data_format=fmt or _data_checks.shape_data_format(x.shape) or "channels_last")
    elif hasattr(x, "dtype"):
        _data_checks.check_float_dtype(x)
    y_shape = tuple(y.shape) if hasattr(y, "shape") else np.shape(y)
    num_classes = _data_checks.model_num_classes(model)
    if isinstance(y, (np.ndarray, list, tuple)) and not _data_checks.is_soft_labels(y_shape, num_classes):
        _data_checks.label_indices(y, num_classes, "y")
    x_shape = tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)
    if x_shape and y_shape and None not in (x_shape[0], y_shape[0]) and x_shape[0] != y_shape[0]:
        raise ValueError(f"Images and labels differ in length: x.shape={x_shape}, y.shape={y_shape}.")
    _data_checks.warn_if_softmax(model, stacklevel=4)


@keras.saving.register_keras_serializable(package="keras_rpat")
class Attack:
    """Base class of attacks: `attack(model, x, y) -> x_adv`.

    Subclasses implement `perturb(model, x, y)`. The returned tensor is a
    constant (`stop_gradient`). BatchNorm runs in inference mode unless
    `training=True`; in inference mode the model's BatchNorm statistics are
    left untouched.

    Args:
        training: run the model in training mode while attacking (the
            ReBAT/SOTAs pipeline). Defaults to `False` (inference mode, Bench).
        schedule: optional `{epoch: {param: value}}`; from that (0-based)
            epoch on, `RPATTrainer` uses the attack with those parameters
            replaced (Table 6's stronger adversary:
            `{100: {"epsilon": 10/255, "num_steps": 12}}`).
        seed: seed of the attack's random starts. The attack's random
            stream (a `keras.random.SeedGenerator`) is made here, from `seed`,
            or with `None` from a seed drawn once now from Keras' global seed
            state (`keras.utils.set_random_seed`): what runs between making
            the attack and using it does not change its draws.
    """

    def __init__(self, training=False, schedule=None, seed=None):
        self.training = _checks.check_bool(training, "training")
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)
        self.schedule = None
        self.schedule = self._check_schedule(schedule)

    # -- schedule -----------------------------------------------------------
    def _check_schedule(self, schedule):
        if schedule is None:
            return None
        if not isinstance(schedule, dict):
            raise ValueError(
                f"`schedule` must be a dict {{epoch: {{parameter: value}}}}. Received: schedule={schedule!r}"
            )
        out = {}
        valid = set(self.get_config())
        for epoch, overrides in schedule.items():
            try:
                epoch = int(epoch)
            except (TypeError, ValueError):
                raise ValueError(
                    "`schedule` maps a non-negative epoch (an integer) to a dict of attack parameters. "
                    f"Received the epoch {epoch!r}; write e.g. {{100: {{'epsilon': 10/255}}}}."
                ) from None
            if epoch < 0 or not isinstance(overrides, dict):
                raise ValueError(
                    "`schedule` maps a non-negative epoch to a dict of attack "
                    f"parameters. Received: {epoch!r}: {overrides!r}"
                )
            unknown = set(overrides) - valid - {"schedule"}
            if unknown:
                raise ValueError(
                    f"Unknown attack parameter(s) {sorted(unknown)} in `schedule`. "
                    f"Valid: {sorted(valid - {'schedule', 'seed'})}"
                )
            out[epoch] = dict(overrides)
            self._on_this_stream(overrides)  # built once now, so that a bad value fails here
        return out

    def at_epoch(self, epoch):
        """Returns the attack to use at the given 0-based epoch."""
        if not self.schedule:
            return self
        overrides = {}
        for start in sorted(self.schedule):
            if epoch >= start:
                overrides.update(self.schedule[start])
        if not overrides:
            return self
        return self._on_this_stream(overrides)

    def _on_this_stream(self, overrides):
        """This attack with `overrides` and no schedule, drawing from this attack's random stream."""
        # `seed=0`: the new attack's own generator (replaced) draws nothing from the global seed state.
        attack = self.__class__.from_config({**self.get_config(), **overrides, "schedule": None, "seed": 0})
        attack.seed = self.seed
        attack._seed_generator = self._seed_generator
        return attack

    def __deepcopy__(self, memo):
        """A copy with its own random stream, at the position of this attack's (no global draw)."""
        copied = self.__class__.from_config({**self.get_config(), "seed": 0})
        copied.seed = self.seed
        rpat_backend.set_generator_state(copied.seed_generator, rpat_backend.get_generator_state(self.seed_generator))
        return copied

    # -- randomness ---------------------------------------------------------
    @property
    def seed_generator(self):
        """The `keras.random.SeedGenerator` of the attack's random starts (made with the attack)."""
        return self._seed_generator

    def build_state(self):
        """Places the random state where a trainer built now runs its steps (the replicas of a
        tf.distribute strategy whose scope is open); outside any traced function."""
        rpat_backend.place_generator(self._seed_generator)
        return self._seed_generator

    # -- call ---------------------------------------------------------------
    def __call__(self, model, x, y):
        _check_call(model, x, y)
        x = ops.convert_to_tensor(x, dtype=_data_checks.pixel_dtype(model))
        y = ops.convert_to_tensor(y)
        x_adv = self.perturb(model, x, y)
        return ops.stop_gradient(x_adv)

    def perturb(self, model, x, y):
        raise NotImplementedError

    def _logits(self, model, x):
        return model(x, training=self.training)

    def get_config(self):
        return {"training": self.training, "schedule": self.schedule, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("schedule"):
            config["schedule"] = {int(k): v for k, v in config["schedule"].items()}
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_rpat")
class PGD(Attack):
    """Projected gradient descent in the L-inf or L2 ball, inside [0, 1].

    Args:
        norm: `"linf"` or `"l2"`.
        epsilon: radius of the ball (pixel fraction; `8/255` or the string
            `"8/255"`).
        step_size: step length. L-inf default `epsilon / 4`.
        num_steps: number of steps (10 for training, 20 for evaluation).
        random_start: draw a random start (see `style`); `False` starts at `x`.
        style: `"advertorch"` (default), `"trades"` or `"sotas"`: the start
            and projection order of the three reference code bases; see the
            module docstring.
        loss: `"ce"` (cross-entropy, mean over the batch), `"kl"` (the
            TRADES attack: summed `KL(p(x) || p(x'))` with the clean
            prediction computed once) or `"cw"` (the CW margin loss `cw_loss`,
            summed over the batch: PGD-CW).
        training: run BatchNorm in training mode during the attack (ReBAT).
        schedule: per-epoch parameter overrides (see `Attack`).
        seed: seed of the random start.

    Example:

    ```python
    attack = keras_rpat.attacks.PGD("linf", epsilon=8/255, step_size=2/255, num_steps=10)
    x_adv = attack(model, x, y)
    ```

    References:
        - Madry et al., Towards Deep Learning Models Resistant to Adversarial
          Attacks, ICLR 2018.
    """

    def __init__(
        self,
        norm="linf",
        epsilon=8 / 255,
        step_size=None,
        num_steps=10,
        random_start=True,
        style="advertorch",
        loss="ce",
        training=False,
        schedule=None,
        seed=None,
    ):
        self.norm = _canonical_norm(norm)
        self.epsilon = _budget(epsilon, "epsilon", self.norm)
        if step_size is None:
            step_size = self.epsilon / 4
        self.step_size = _budget(step_size, "step_size", self.norm)
        if (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, numbers.Real)
            or not float(num_steps).is_integer()
            or num_steps < 0
        ):
            raise ValueError(f"`num_steps` must be a non-negative integer. Received: num_steps={num_steps!r}")
        self.num_steps = int(num_steps)
        self.random_start = _checks.check_bool(random_start, "random_start")
        if style not in STYLES:
            raise ValueError(f"Unknown `style`: {style!r}. Expected one of {STYLES}.")
        self.style = style
        if loss not in ATTACK_LOSSES:
            raise ValueError(f"Unknown attack `loss`: {loss!r}. Expected one of {ATTACK_LOSSES}.")
        self.loss = loss
        super().__init__(training=training, schedule=schedule, seed=seed)

    def get_config(self):
        return {
            "norm": self.norm,
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "num_steps": self.num_steps,
            "random_start": self.random_start,
            "style": self.style,
            "loss": self.loss,
            **super().get_config(),
        }

    # -- pieces -------------------------------------------------------------
    def _clip_box(self, x, delta):
        return ops.clip(x + delta, 0.0, 1.0) - x

    def _renorm(self, delta, floor):
        # torch.renorm(p=2, dim=0, maxnorm=eps): scale by eps/(|d| + 1e-7) if |d| > eps.
        norms = _batch_norms(delta)
        factor = ops.where(norms > self.epsilon, self.epsilon / (norms + floor), 1.0)
        return delta * factor

    def _init_delta(self, x):
        shape = ops.shape(x)
        seed = self.seed_generator
        if not self.random_start:
            return ops.zeros_like(x)
        if self.style == "trades":
            # x' = x + 0.001 * N(0, I), not clipped (docs/algorithms.md#trades-mart-start).
            return 0.001 * rpat_backend.random_normal(shape, dtype=x.dtype, seed=seed)
        if self.norm == "linf":
            delta = rpat_backend.random_uniform(shape, -self.epsilon, self.epsilon, x.dtype, seed)
            return self._clip_box(x, delta)
        if self.style == "advertorch":
            # delta = u - x, u ~ U[0, 1]; clamp_by_pnorm to eps; clip to box.
            u = rpat_backend.random_uniform(shape, 0.0, 1.0, x.dtype, seed)
            delta = u - x
            norms = _batch_norms(delta)
            delta = delta * ops.minimum(self.epsilon / ops.maximum(norms, 1e-12), 1.0)
            return self._clip_box(x, delta)
        # sotas L2: radius eps * u (u ~ U[0,1] per sample), Gaussian direction.
        g = rpat_backend.random_normal(shape, dtype=x.dtype, seed=seed)
        radius_shape = (shape[0],) + (1,) * (len(x.shape) - 1)
        u = rpat_backend.random_uniform(radius_shape, 0.0, 1.0, x.dtype, seed)
        delta = self.epsilon * u * g / ops.maximum(_batch_norms(g), 1e-12)
        return self._clip_box(x, delta)

    def _step(self, x, delta, grad):
        s = self.step_size
        if self.norm == "linf":
            delta = delta + s * ops.sign(grad)
            if self.style == "trades":
                x_adv = ops.minimum(ops.maximum(x + delta, x - self.epsilon), x + self.epsilon)
                return ops.clip(x_adv, 0.0, 1.0) - x
            delta = ops.clip(delta, -self.epsilon, self.epsilon)
            return self._clip_box(x, delta)
        norms = _batch_norms(grad)
        if self.style == "advertorch":
            delta = delta + s * grad / ops.maximum(norms, 1e-6)
            delta = self._clip_box(x, delta)
            dn = _batch_norms(delta)
            return delta * ops.minimum(self.epsilon / ops.maximum(dn, 1e-12), 1.0)
        floor = 1e-8 if self.style == "trades" else 1e-10
        delta = delta + s * grad / (norms + floor)
        delta = self._renorm(delta, 1e-7)
        return self._clip_box(x, delta)

    def perturb(self, model, x, y):
        _data_checks.check_float_dtype(x)
        if self.loss == "kl":
            clean_logits = ops.stop_gradient(self._logits(model, x))

            def loss_fn(x_adv):
                return ops.sum(kl_from_logits(clean_logits, self._logits(model, x_adv)))

        else:

            def loss_fn(x_adv):
                return _LABEL_LOSSES[self.loss](y, self._logits(model, x_adv))

        def step(delta):
            _, grad = rpat_backend.input_gradient(loss_fn, x + delta)
            return self._step(x, delta, grad)

        delta = rpat_backend.loop(self.num_steps, step, self._init_delta(x))
        if self.training and self.style == "sotas":
            # `attack_pgd` ends with one more forward (its max-loss selection);
            # in training mode its only effect is one more BatchNorm update.
            with rpat_backend.no_grad():
                self._logits(model, x + delta)
        return x + delta


@keras.saving.register_keras_serializable(package="keras_rpat")
class RestartedPGD(PGD):
    """PGD from `restarts` random starts, the worst case per image (PGD-20 x 5).

    Runs `PGD.perturb` `restarts` times, each from its own random start drawn
    from the attack's stream, and keeps for each image the first restart's
    `x_adv` that the model misclassifies (its prediction in the attack's
    `training` mode), else the last restart's: an image survives only if it
    survives every restart. Costs `restarts` PGD runs and `restarts - 1` forwards.

    Args:
        restarts: number of random starts (>= 1; 1 is `PGD`).
        *args, **kwargs: the arguments of `PGD`.

    Example:

    ```python
    attack = keras_rpat.attacks.RestartedPGD("linf", 8/255, 2/255, num_steps=20, restarts=5)
    ```
    """

    def __init__(self, *args, restarts=5, **kwargs):
        self.restarts = _checks.check_positive_int(restarts, "restarts")
        super().__init__(*args, **kwargs)
        if self.restarts > 1 and not self.random_start:
            warnings.warn(
                f"RestartedPGD(restarts={self.restarts}, random_start=False) runs the same attack "
                f"{self.restarts} times; pass random_start=True.",
                UserWarning,
                stacklevel=2,
            )

    def get_config(self):
        return {**super().get_config(), "restarts": self.restarts}

    def perturb(self, model, x, y):
        best = fooled = None
        for restart in range(self.restarts):
            x_adv = super().perturb(model, x, y)
            if best is not None:
                mask = ops.reshape(fooled, (-1,) + (1,) * (len(x.shape) - 1))
                best = ops.where(mask, best, x_adv)
            else:
                best = x_adv
            if restart < self.restarts - 1:  # the last restart's prediction decides nothing
                with rpat_backend.no_grad():
                    logits = self._logits(model, x_adv)
                label = ops.argmax(_soft_targets(y, logits), axis=-1)
                now = ops.not_equal(ops.argmax(logits, axis=-1), label)
                fooled = now if fooled is None else ops.logical_or(fooled, now)
        return best


@keras.saving.register_keras_serializable(package="keras_rpat")
class FGSM(PGD):
    """Fast gradient sign method: one L-inf step of size `epsilon` from `x`.

    Args:
        epsilon: L-inf budget.
        random_start: start from a uniform point in the ball first (FGSM-RS).
        training, schedule, seed: see `Attack`.

    References:
        - Goodfellow et al., Explaining and Harnessing Adversarial Examples,
          ICLR 2015.
    """

    def __init__(self, epsilon=8 / 255, random_start=False, training=False, schedule=None, seed=None, **kwargs):
        kwargs.pop("norm", None)
        kwargs.pop("num_steps", None)
        step_size = kwargs.pop("step_size", None)
        super().__init__(
            norm="linf",
            epsilon=epsilon,
            step_size=epsilon if step_size is None else step_size,
            num_steps=1,
            random_start=random_start,
            training=training,
            schedule=schedule,
            seed=seed,
            **kwargs,
        )


@keras.saving.register_keras_serializable(package="keras_rpat")
class RandomNoise(Attack):
    """Uniform noise `U[-epsilon, epsilon]` per pixel, clipped to [0, 1].

    The perturbation of the random-noise-trained model and of the "Random"
    test perturbation of Figure 2. Fresh noise every call.

    Args:
        epsilon: half-width of the uniform noise.
        training, schedule, seed: see `Attack`.
    """

    def __init__(self, epsilon=8 / 255, training=False, schedule=None, seed=None):
        self.epsilon = _budget(epsilon, "epsilon", "linf")
        self.norm = "linf"
        super().__init__(training=training, schedule=schedule, seed=seed)

    def get_config(self):
        return {"epsilon": self.epsilon, **super().get_config()}

    def perturb(self, model, x, y):
        _data_checks.check_float_dtype(x)
        noise = rpat_backend.random_uniform(ops.shape(x), -self.epsilon, self.epsilon, x.dtype, self.seed_generator)
        return ops.clip(x + noise, 0.0, 1.0)


def TRADESAttack(norm="linf", epsilon=8 / 255, step_size=2 / 255, num_steps=10, **kwargs):
    """The TRADES inner maximisation: summed KL to the clean prediction.

    `PGD(style="trades", loss="kl")`: start `x + 0.001 N(0, I)`, inference mode.
    """
    return PGD(norm, epsilon, step_size, num_steps, style="trades", loss="kl", **kwargs)


def MARTAttack(norm="linf", epsilon=8 / 255, step_size=2 / 255, num_steps=10, **kwargs):
    """The MART inner maximisation: CE from a `x + 0.001 N(0, I)` start."""
    return PGD(norm, epsilon, step_size, num_steps, style="trades", loss="ce", **kwargs)


_ATTACKS = {"pgd": PGD, "fgsm": FGSM, "random_noise": RandomNoise}


def get(identifier):
    """Returns an attack from an instance, `None`, a config dict or a name."""
    if identifier is None or isinstance(identifier, Attack):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str) and identifier.lower() in _ATTACKS:
        return _ATTACKS[identifier.lower()]()
    raise ValueError(
        f"Could not interpret attack: {identifier!r}. Pass a "
        f"keras_rpat.attacks.Attack, None (clean training) or one of {sorted(_ATTACKS)}."
    )


def serialize(attack):
    return None if attack is None else keras.saving.serialize_keras_object(attack)
