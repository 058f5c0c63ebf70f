"""PyTorch-style SGD and the learning-rate schedules of the RPAT reference code.

Both RPAT code bases train with `torch.optim.SGD(lr=0.1, momentum=0.9,
weight_decay=5e-4)`: *coupled* L2 weight decay (added to the gradient of every
parameter) and a momentum buffer that does not contain the learning rate.
Keras' built-in `keras.optimizers.SGD` differs on both counts (decoupled weight
decay, learning rate folded into the velocity), which changes the trajectory
as soon as the learning rate decays. `SGD` below reproduces PyTorch exactly.

The schedules reproduce the two learning-rate rules of the reference code:
`MultiStepDecay` (Bench, `MultiStepLR` stepped once per epoch) and
`PiecewiseDecay` (SOTAs / ReBAT, per iteration), and the leaderboard's
cosine schedule with warm-up, `WarmupCosineDecay` (Wang et al. 2023,
`OneCycleLR` stepped once per epoch).

Everything here is written with `keras.ops` only, without Python branches on
tensor values, so a whole training step can be traced into one graph.
"""

import math
import numbers

import keras
from keras import ops

from keras_rpat import _checks
from keras_rpat._epochs import scale_epoch
from keras_rpat._names import WEIGHT_DECAY_EXCLUSIONS

__all__ = [
    "SGD",
    "MultiStepDecay",
    "PiecewiseDecay",
    "WarmupCosineDecay",
    "bench_milestones",
    "scale_epoch",
    "scale_milestones",
]


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package="keras_rpat")
class SGD(keras.optimizers.Optimizer):
    """Stochastic gradient descent with exact `torch.optim.SGD` semantics.

    For every trainable variable `theta` with gradient `g`, one step does

    ```python
    d = g + weight_decay * theta                  # coupled L2 weight decay
    if momentum != 0:
        if first_step:
            buf = d                               # torch's `clone` on step 1
        else:
            buf = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    theta = theta - learning_rate * d
    ```

    This differs from `keras.optimizers.SGD`, whose `weight_decay` is
    decoupled (`theta -= lr * wd * theta`, outside the gradient) and whose
    velocity has the learning rate folded in. `weight_decay` is therefore not
    passed to the Keras base class; by default it is applied to the gradient
    of every trainable variable, batch-normalization scales and offsets and
    biases included, as in the reference code. `weight_decay_exclude` leaves
    the normalization scales and offsets (`gamma`, `beta`), and optionally the
    biases, out, as a PyTorch parameter group with `weight_decay=0`; other
    variables can be excluded with `exclude_from_weight_decay()` before the
    optimizer is built.

    On the torch backend the update runs as a handful of `torch._foreach_*`
    kernels over all variables at once (the same arithmetic); other backends
    use the per-variable `update_step`.

    Args:
        learning_rate: A float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` instance (such
            as `keras_rpat.optimizers.MultiStepDecay`), or a callable that
            takes no arguments and returns the learning rate. Defaults to
            `0.1`.
        momentum: float in `[0, 1)`. Momentum factor; `0` disables the
            momentum buffer. Defaults to `0.9`.
        weight_decay: float >= 0. Coefficient of the L2 penalty added to the
            gradient (PyTorch's `weight_decay`); `None` means `0`. Defaults
            to `5e-4`.
        nesterov: bool. Whether to use Nesterov momentum (requires
            `momentum > 0` and `dampening == 0`, as in PyTorch). Defaults to
            `False`.
        dampening: float in `[0, 1]`. Dampening for momentum. Defaults to
            `0.0`.
        weight_decay_exclude: which variables get no weight decay: `None`
            (none, the RPAT reference code), `"batchnorm"` (the 1-D `gamma`
            and `beta` of the normalization layers: `group_weight` of Wang et
            al. 2023's `watrain.py`, which puts every parameter named
            `batchnorm` in a `weight_decay=0` group) or `"batchnorm_and_bias"`
            (those and every variable named `bias`, as Gowal et al. 2020 decay
            the weights only). Defaults to `None`.
        **kwargs: Other keyword arguments of `keras.optimizers.Optimizer`
            (`name`, `clipnorm`, `clipvalue`, `global_clipnorm`, `use_ema`,
            `ema_momentum`, `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`).

    Example:

    ```python
    schedule = keras_rpat.optimizers.MultiStepDecay(
        0.1, milestones=[100, 105], steps_per_epoch=391
    )
    optimizer = keras_rpat.optimizers.SGD(
        schedule, momentum=0.9, weight_decay=5e-4
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```

    References:
        - [Sutskever et al., 2013](
          https://proceedings.mlr.press/v28/sutskever13.html) (momentum).
        - [PyTorch `torch.optim.SGD`](
          https://pytorch.org/docs/stable/generated/torch.optim.SGD.html).
        - [Wang & Liu, 2025](https://openaccess.thecvf.com/ICCV2025),
          *Failure Cases Are Better Learned But Boundary Says Sorry* (RPAT).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=False,
        dampening=0.0,
        weight_decay_exclude=None,
        **kwargs,
    ):
        if _is_number(learning_rate):
            if not learning_rate >= 0:
                raise ValueError(f"`learning_rate` must be >= 0. Received: learning_rate={learning_rate}")
            learning_rate = float(learning_rate)
        if not _is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
        if weight_decay is None:
            weight_decay = 0.0
        if not _is_number(weight_decay) or not weight_decay >= 0:
            raise ValueError(f"`weight_decay` must be a float >= 0. Received: weight_decay={weight_decay}")
        if not _is_number(dampening) or not 0 <= dampening <= 1:
            raise ValueError(f"`dampening` must be in [0, 1]. Received: dampening={dampening}")
        if not isinstance(nesterov, bool):
            raise ValueError(f"`nesterov` must be a bool. Received: nesterov={nesterov}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires `momentum` > 0 and "
                "`dampening` == 0. Received: "
                f"momentum={momentum}, dampening={dampening}"
            )
        if weight_decay_exclude is not None and weight_decay_exclude not in WEIGHT_DECAY_EXCLUSIONS:
            raise ValueError(
                f"`weight_decay_exclude` must be None or one of {WEIGHT_DECAY_EXCLUSIONS}. "
                f"Received: weight_decay_exclude={weight_decay_exclude!r}"
            )
        # Keras' own `weight_decay` is decoupled: keep it off the base class.
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = nesterov
        self.dampening = float(dampening)
        self.weight_decay_exclude = weight_decay_exclude
        # Private switch for the torch `_foreach` fast path (tests turn it off
        # to compare it with the per-variable path).
        self._use_foreach = True

    def build(self, variables):
        """Create the momentum buffers (one per variable, if `momentum > 0`).

        Args:
            variables: list of the model variables the optimizer updates.
        """
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided once, in Python, so the update step has no per-variable
        # look-ups to trace.
        self._decay_flags = tuple(self._use_weight_decay(v) and not self._excluded(v) for v in variables)

    def _excluded(self, variable):
        """Whether `weight_decay_exclude` leaves `variable` out of the weight decay."""
        if self.weight_decay_exclude is None:
            return False
        name = variable.name.rsplit("/", 1)[-1]
        if name in ("gamma", "beta") and len(variable.shape) == 1:  # a normalization layer's scale / offset
            return True
        return self.weight_decay_exclude == "batchnorm_and_bias" and name == "bias"

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        if self.built:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the optimizer is built.")
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    exclude_from_weight_decay.__doc__ = keras.optimizers.Optimizer.exclude_from_weight_decay.__doc__

    # Private Keras (no public hook): SGD overrides `_apply_weight_decay` and `_backend_update_step` and
    # calls `_use_weight_decay` / `_get_variable_index`; pinned by
    # tests/test_keras_pins.py::test_the_optimizer_methods_sgd_overrides_and_calls_are_the_ones_it_was_written_for.
    def _apply_weight_decay(self, variables):
        # Weight decay is coupled and happens inside `update_step`; the base
        # class' decoupled decay must not run on top of it.
        return

    def _first_step_coefficient(self, dtype):
        """`1` on the first update (torch clones `d`), `1 - dampening` after."""
        return ops.cast(
            ops.where(ops.equal(self.iterations, 0), 1.0, 1.0 - self.dampening),
            dtype,
        )

    def update_step(self, gradient, variable, learning_rate):
        """Update one variable; see the class docstring for the rule."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        d = ops.cast(gradient, dtype)
        if self.weight_decay != 0 and self._decay_flags[index]:
            d = ops.add(d, ops.multiply(variable, self.weight_decay))
        if self.momentum != 0:
            buf = self.momentums[index]
            if self.dampening != 0:
                new_buf = ops.add(
                    ops.multiply(buf, self.momentum),
                    ops.multiply(d, self._first_step_coefficient(dtype)),
                )
            else:
                # The buffer starts at zero, so step 1 gives exactly `d`.
                new_buf = ops.add(ops.multiply(buf, self.momentum), d)
            self.assign(buf, new_buf)
            if self.nesterov:
                d = ops.add(d, ops.multiply(new_buf, self.momentum))
            else:
                d = new_buf
        self.assign_sub(variable, ops.multiply(d, learning_rate))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._use_foreach and keras.config.backend() == "torch":
            from keras_rpat.backend import torch_optimizers

            indices = [self._get_variable_index(v) for v in trainable_variables]
            first_step = None
            if self.momentum != 0 and self.dampening != 0:
                first_step = ops.equal(self.iterations, 0)
            done = torch_optimizers.sgd_foreach_update(
                variables=[v.value for v in trainable_variables],
                grads=list(grads),
                momentum_buffers=([self.momentums[i].value for i in indices] if self.momentum != 0 else None),
                learning_rate=learning_rate,
                momentum=self.momentum,
                dampening=self.dampening,
                nesterov=self.nesterov,
                weight_decay=self.weight_decay,
                decay_flags=[self._decay_flags[i] for i in indices],
                first_step=first_step,
            )
            if done:
                return
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.weight_decay,
                "nesterov": self.nesterov,
                "dampening": self.dampening,
                "weight_decay_exclude": self.weight_decay_exclude,
            }
        )
        return config


def _check_steps_per_epoch(steps_per_epoch):
    if not _is_int(steps_per_epoch) or steps_per_epoch <= 0:
        raise ValueError(f"`steps_per_epoch` must be an integer > 0. Received: steps_per_epoch={steps_per_epoch}")
    return int(steps_per_epoch)


def _check_initial_learning_rate(initial_learning_rate):
    if not _is_number(initial_learning_rate) or not initial_learning_rate >= 0:
        raise ValueError(
            f"`initial_learning_rate` must be a float >= 0. Received: initial_learning_rate={initial_learning_rate}"
        )
    return float(initial_learning_rate)


def _check_milestones(milestones, integer):
    kind = "integers >= 0" if integer else "numbers >= 0"
    try:
        values = list(milestones)
    except TypeError:
        values = None
    check = _is_int if integer else _is_number
    if not values or not all(check(m) and m >= 0 for m in values) or any(a > b for a, b in zip(values, values[1:])):
        raise ValueError(
            f"`milestones` must be a non-empty, sorted list of {kind} (epochs). Received: milestones={milestones}"
        )
    return [int(m) if _is_int(m) else float(m) for m in values]


def _piecewise(step, thresholds, values):
    """`values[k]` where `k` = number of `thresholds` with `step >= t`."""
    dtype = keras.backend.floatx()
    step = ops.convert_to_tensor(step)
    result = ops.convert_to_tensor(values[0], dtype=dtype)
    # Thresholds are sorted, so the last satisfied one wins.
    for threshold, value in zip(thresholds, values[1:]):
        result = ops.where(
            ops.greater_equal(step, threshold),
            ops.convert_to_tensor(value, dtype=dtype),
            result,
        )
    return result


@keras.saving.register_keras_serializable(package="keras_rpat")
class MultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Per-epoch multi-step decay, as `torch.optim.lr_scheduler.MultiStepLR`.

    The reference code (Bench) steps `MultiStepLR` once per epoch. With the
    0-based optimizer iteration `step` and the 0-based epoch
    `epoch = step // steps_per_epoch`, the learning rate is

    ```python
    num_decays = len([m for m in milestones if epoch >= m])
    lr = initial_learning_rate * gamma**num_decays
    ```

    (multiplied by `gamma` once per milestone, in that order, as PyTorch
    does). With 110 epochs and `milestones=[100, 105]` this gives 0.1 for
    the 1-based epochs 1-100, 0.01 for 101-105 and 0.001 for 106-110.
    `bench_milestones(epochs)` returns the reference milestones.

    Args:
        initial_learning_rate: float >= 0. Learning rate before the first
            milestone.
        milestones: non-empty, sorted list of integer epochs (0-based epoch
            index at which the decay starts; equivalently the number of
            epochs completed before it). A repeated milestone decays twice.
        steps_per_epoch: int > 0. Optimizer steps per epoch (391 for
            CIFAR at batch size 128 with the last partial batch kept).
        gamma: float > 0. Multiplicative decay factor. Defaults to `0.1`.

    Example:

    ```python
    schedule = keras_rpat.optimizers.MultiStepDecay(
        0.1,
        milestones=keras_rpat.optimizers.bench_milestones(110),
        steps_per_epoch=391,
    )
    optimizer = keras_rpat.optimizers.SGD(schedule)
    ```

    References:
        - [Wang & Liu, 2025](https://openaccess.thecvf.com/ICCV2025),
          *Failure Cases Are Better Learned But Boundary Says Sorry* (RPAT),
          `RPAT_Benchmarks/common/utils.py`.
    """

    def __init__(self, initial_learning_rate, milestones, steps_per_epoch, gamma=0.1):
        super().__init__()
        initial_learning_rate = _check_initial_learning_rate(initial_learning_rate)
        milestones = _check_milestones(milestones, integer=True)
        steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
        if not _is_number(gamma) or not gamma > 0:
            raise ValueError(f"`gamma` must be a float > 0. Received: gamma={gamma}")
        self.initial_learning_rate = initial_learning_rate
        self.milestones = milestones
        self.steps_per_epoch = steps_per_epoch
        self.gamma = float(gamma)

    def _values(self):
        # Sequential multiplication, exactly as MultiStepLR updates its lr.
        values = [self.initial_learning_rate]
        for _ in self.milestones:
            values.append(values[-1] * self.gamma)
        return values

    def __call__(self, step):
        # `step // steps_per_epoch >= m` <=> `step >= m * steps_per_epoch`.
        thresholds = [m * self.steps_per_epoch for m in self.milestones]
        return _piecewise(step, thresholds, self._values())

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "milestones": list(self.milestones),
            "steps_per_epoch": self.steps_per_epoch,
            "gamma": self.gamma,
        }


@keras.saving.register_keras_serializable(package="keras_rpat")
class PiecewiseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Per-iteration piecewise decay of the ReBAT / RPAT++ code (SOTAs).

    With the 0-based optimizer iteration `step`, the fractional epoch
    *after* this step is `t = (step + 1) / steps_per_epoch` (the reference's
    `epoch + (i + 1) / N`), and, with `(m0, m1) = milestones`,

    ```python
    lr = initial_learning_rate              # t < m0
    lr = initial_learning_rate / factor     # m0 <= t < m1
    lr = initial_learning_rate / factor**2  # t >= m1
    ```

    (in general divided by `factor**k`, `k` = number of milestones `<= t`).
    The last iteration of epochs 99 and 149 (0-based) therefore already
    uses the decayed learning rate, as in the reference.

    Args:
        initial_learning_rate: float >= 0. The reference's `--lr-max`
            (0.1).
        steps_per_epoch: int > 0. Optimizer steps per epoch (391 for
            CIFAR at batch size 128 with the last partial batch kept).
        milestones: non-empty, sorted list of epochs (may be fractional).
            Defaults to `(100, 150)`.
        factor: float > 0. The reference's `--lr-factor`; each milestone
            divides the learning rate by it. Defaults to `1.5`.

    Example:

    ```python
    schedule = keras_rpat.optimizers.PiecewiseDecay(
        0.1, steps_per_epoch=391, milestones=(100, 150), factor=1.5
    )
    optimizer = keras_rpat.optimizers.SGD(schedule)
    ```

    References:
        - [Wang et al., 2023](https://arxiv.org/abs/2310.19360),
          *Balance, Imbalance, and Rebalance: Understanding Robust
          Overfitting from a Minimax Game Perspective* (ReBAT).
        - [Wang & Liu, 2025](https://openaccess.thecvf.com/ICCV2025),
          *Failure Cases Are Better Learned But Boundary Says Sorry* (RPAT),
          `RPAT_SOTAs/train_cifar_ra.py`.
    """

    def __init__(
        self,
        initial_learning_rate,
        steps_per_epoch,
        milestones=(100, 150),
        factor=1.5,
    ):
        super().__init__()
        initial_learning_rate = _check_initial_learning_rate(initial_learning_rate)
        steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
        milestones = _check_milestones(milestones, integer=False)
        if not _is_number(factor) or not factor > 0:
            raise ValueError(f"`factor` must be a float > 0. Received: factor={factor}")
        self.initial_learning_rate = initial_learning_rate
        self.steps_per_epoch = steps_per_epoch
        self.milestones = milestones
        self.factor = float(factor)

    def _values(self):
        # `lr_max / f`, `lr_max / f**2`, ... exactly as the reference writes it.
        return [self.initial_learning_rate / self.factor**k for k in range(len(self.milestones) + 1)]

    def __call__(self, step):
        # `(step + 1) / N >= m` <=> `step >= ceil(m * N) - 1` for integer steps.
        thresholds = [math.ceil(m * self.steps_per_epoch) - 1 for m in self.milestones]
        return _piecewise(step, thresholds, self._values())

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "milestones": list(self.milestones),
            "factor": self.factor,
        }


WARMUP_SHAPES = ("cosine", "linear")


@keras.saving.register_keras_serializable(package="keras_rpat")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay after a warm-up, as the leaderboard's recipes train (Wang et al. 2023).

    The schedule of `torch.optim.lr_scheduler.OneCycleLR(max_lr,
    pct_start=warmup_fraction, total_steps=epochs)` with its defaults
    (`div_factor=25`, `final_div_factor=1e4`, two phases, cosine annealing),
    stepped once per epoch: the `--scheduler cosinew` default of Wang et al.
    2023's `core/utils/train.py` (`Trainer.init_scheduler`) and `train-wa.py`.
    With the 0-based counter `u` (the epoch `step // steps_per_epoch`, or the
    optimizer step itself if `per_epoch=False`), `total` counters (`epochs`,
    or `epochs * steps_per_epoch`) and `w = warmup_fraction * total - 1`:

    ```python
    start = max_learning_rate / div_factor
    final = start / final_div_factor
    if u <= w:  # warm-up: start -> max_learning_rate
        lr = anneal(start, max_learning_rate, u / w)
    else:       # decay: max_learning_rate -> final
        lr = anneal(max_learning_rate, final, min((u - w) / (total - 1 - w), 1))
    # anneal(a, b, p) = b + (a - b) / 2 * (1 + cos(pi * p))
    ```

    `warmup="linear"` makes the warm-up linear, `a + (b - a) * p`, as Gowal
    et al. 2020 warm up (the decay stays cosine). With 400 epochs the
    warm-up covers the (0-based) epochs 0-9 (`w = 9`) and the decay reaches
    `final` in the last epoch. A warm-up shorter than one counter (`w < 0`,
    e.g. under 40 epochs at 2.5 % per epoch) starts the decay part-way, as
    `OneCycleLR` does; `w = 0` (where `OneCycleLR` divides by zero) starts at
    `max_learning_rate`. Past the end the rate stays at `final`.

    Args:
        max_learning_rate: float >= 0. The peak learning rate (`--lr`, 0.2
            at batch size 512 in Wang et al. 2023).
        epochs: int > 0. Length of the run in epochs.
        steps_per_epoch: int > 0. Optimizer steps per epoch.
        warmup_fraction: float in `[0, 1)`. Share of the run spent warming up
            (`pct_start`; 0.025). Defaults to `0.025`.
        warmup: `"cosine"` (`OneCycleLR`) or `"linear"`. Defaults to
            `"cosine"`.
        div_factor: float >= 1. `max_learning_rate / div_factor` is the first
            rate. Defaults to `25.0`.
        final_div_factor: float >= 1. The last rate is the first one divided
            by it. Defaults to `1e4`.
        per_epoch: bool. Whether the rate changes once per epoch (the
            reference) or at every step. Defaults to `True`.

    Example:

    ```python
    schedule = keras_rpat.optimizers.WarmupCosineDecay(
        0.1, epochs=400, steps_per_epoch=391
    )
    optimizer = keras_rpat.optimizers.SGD(schedule, nesterov=True)
    ```

    References:
        - [Wang et al., 2023](https://arxiv.org/abs/2302.04638), *Better
          Diffusion Models Further Improve Adversarial Training*
          (github.com/wzekai99/DM-Improves-AT, `core/utils/train.py`).
        - [PyTorch `OneCycleLR`](
          https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.OneCycleLR.html).
        - [Gowal et al., 2020](https://arxiv.org/abs/2010.03593),
          *Uncovering the Limits of Adversarial Training against Norm-Bounded
          Adversarial Examples* (linear warm-up).
    """

    def __init__(
        self,
        max_learning_rate,
        epochs,
        steps_per_epoch,
        warmup_fraction=0.025,
        warmup="cosine",
        div_factor=25.0,
        final_div_factor=1e4,
        per_epoch=True,
    ):
        super().__init__()
        if not _is_number(max_learning_rate) or not max_learning_rate >= 0:
            raise ValueError(
                f"`max_learning_rate` must be a float >= 0. Received: max_learning_rate={max_learning_rate}"
            )
        if not _is_int(epochs) or epochs <= 0:
            raise ValueError(f"`epochs` must be an integer > 0. Received: epochs={epochs}")
        steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
        if not _is_number(warmup_fraction) or not 0 <= warmup_fraction < 1:
            raise ValueError(f"`warmup_fraction` must be in [0, 1). Received: warmup_fraction={warmup_fraction}")
        _checks.check_choice(warmup, "warmup", WARMUP_SHAPES)
        for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not _is_number(value) or not value >= 1:
                raise ValueError(f"`{name}` must be a float >= 1. Received: {name}={value}")
        if not isinstance(per_epoch, bool):
            raise ValueError(f"`per_epoch` must be a bool. Received: per_epoch={per_epoch!r}")
        self.max_learning_rate = float(max_learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = steps_per_epoch
        self.warmup_fraction = float(warmup_fraction)
        self.warmup = warmup
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.per_epoch = per_epoch

    def __call__(self, step):
        dtype = keras.backend.floatx()
        step = ops.convert_to_tensor(step)
        if self.per_epoch:
            total = self.epochs
            counter = ops.cast(ops.floor_divide(step, self.steps_per_epoch), dtype)
        else:
            total = self.epochs * self.steps_per_epoch
            counter = ops.cast(step, dtype)
        peak = self.max_learning_rate
        start = peak / self.div_factor
        final = start / self.final_div_factor
        warmup_end = self.warmup_fraction * total - 1  # OneCycleLR's `end_step` of its first phase
        # Decided in Python (constants), so the schedule has no branch on tensor values.
        rising = ops.divide(counter, warmup_end) if warmup_end > 0 else ops.ones_like(counter)
        rising = ops.clip(rising, 0.0, 1.0)
        # anneal(a, b, p) = b + (a - b) * cos(pi p / 2)**2 = b + (a - b) * sin(pi (1 - p) / 2)**2: the decay
        # takes `1 - p` from the steps left, so float32 keeps the small final rates (no cancellation in
        # `1 + cos(pi p)` near p = 1).
        if self.warmup == "cosine":
            warm = peak + (start - peak) * ops.square(ops.cos(math.pi / 2 * rising))
        else:
            warm = start + (peak - start) * rising
        left = ops.clip(ops.divide((total - 1) - counter, total - 1 - warmup_end), 0.0, 1.0)
        decay = final + (peak - final) * ops.square(ops.sin(math.pi / 2 * left))
        return ops.where(ops.less_equal(counter, warmup_end), warm, decay)

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_fraction": self.warmup_fraction,
            "warmup": self.warmup,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "per_epoch": self.per_epoch,
        }


def bench_milestones(epochs):
    """Milestones of the Bench `MultiStepLR` for a run of `epochs` epochs.

    `[100, 105]` when `epochs < 200`, else `[int(0.5 * epochs),
    int(0.75 * epochs)]` (e.g. `[100, 150]` for 200 epochs).

    Args:
        epochs: int > 0. Number of training epochs.

    Returns:
        A list of two integer milestones for `MultiStepDecay`.

    Example:

    ```python
    >>> keras_rpat.optimizers.bench_milestones(110)
    [100, 105]
    >>> keras_rpat.optimizers.bench_milestones(200)
    [100, 150]
    ```
    """
    if not _is_int(epochs) or epochs <= 0:
        raise ValueError(f"`epochs` must be an integer > 0. Received: epochs={epochs}")
    if epochs < 200:
        return [100, 105]
    return [int(0.5 * epochs), int(0.75 * epochs)]


def scale_milestones(milestones, epochs, reference_epochs):
    """Rescale milestones of a `reference_epochs` schedule to `epochs` epochs.

    Each milestone `m` becomes `scale_epoch(m, epochs, reference_epochs)`
    (the nearest epoch, ties to the earlier one), at least 1 for `m > 0`, so
    that a shortened run decays at the same fractions of training. Useful for
    quick runs of the paper's schedules.

    Args:
        milestones: non-empty, sorted list of epochs >= 0.
        epochs: int > 0. Length of the shortened (or lengthened) run.
        reference_epochs: int > 0. Length of the run the milestones were
            written for.

    Returns:
        A sorted list of integer milestones.

    Example:

    ```python
    >>> keras_rpat.optimizers.scale_milestones([100, 150], 20, 200)
    [10, 15]
    >>> keras_rpat.optimizers.scale_milestones([100, 105], 11, 110)
    [10, 10]
    ```
    """
    milestones = _check_milestones(milestones, integer=False)
    for name, value in (
        ("epochs", epochs),
        ("reference_epochs", reference_epochs),
    ):
        if not _is_int(value) or value <= 0:
            raise ValueError(f"`{name}` must be an integer > 0. Received: {name}={value}")
    scaled = []
    for m in milestones:
        value = scale_epoch(m, epochs, reference_epochs)
        scaled.append(max(value, 1) if m > 0 else 0)
    return scaled
